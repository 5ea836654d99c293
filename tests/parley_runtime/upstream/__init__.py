"""The libraries' own tests, run against the tuned classes that replace theirs.

parley_runtime keeps the public contract of each class it replaces exactly; these suites say
what that contract is, in the libraries' own words. Their test files come from each
library's sdist on PyPI at exactly the pinned version (parley_runtime.pins.PINS), checked
against the sha256 pinned here, cached under ~/.cache/parley and extracted at test time:
nothing of their test code is kept in this repository.

- channels-redis: its pub/sub tests, with `RedisPubSubChannelLayer` replaced by
  parley_runtime.layers.PubSubChannelLayer (their fixtures build the layer by that name).
- daphne: its tests that start a real daphne through daphne.testing, with the tuned server
  (parley_runtime.websocket.TunedServer: ParleyWebSocketProtocol, InputQueue) as the
  daphne.server.Server those processes run.

`EXCLUDED` is the one list of their tests that do not run against the tuned classes, each
with its reason; every other test of the listed files must pass. Upgrading a library:
bump the pin, then the sdist's hash here (the test names the new one), then run
`pytest tests/parley_runtime/test_upstream.py`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from parley_runtime.pins import PINS

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parley" / "sdists"


@dataclass(frozen=True)
class Suite:
    library: str  # its name in PINS (and on PyPI)
    sha256: dict[str, str]  # sdist sha256 by version: the pinned version must have one
    files: tuple[str, ...]  # their test files that exercise the replaced classes

    @property
    def version(self) -> str:
        return PINS[self.library]


SUITES = {
    "channels-redis": Suite(
        "channels-redis",
        {"4.3.0": "740ee7b54f0e28cf2264a940a24453d3f00526a96931f911fcb69228ef245dd2"},
        # Everything of its suite that builds a RedisPubSubChannelLayer (test_core.py,
        # test_sentinel.py: RedisChannelLayer, which Parley does not replace; test_utils.py,
        # test_serializers.py: no layer).
        ("tests/test_pubsub.py", "tests/test_pubsub_sentinel.py"),
    ),
    "daphne": Suite(
        "daphne",
        {"4.2.3": "1c458f81926b37301cadc8ec1b6316d9a5db53fba061fc4826610395fe5d5c81"},
        # Everything of its suite that runs a daphne Server (daphne.testing); its other
        # tests build protocols on a mock server or test the CLI, checks and utilities.
        ("tests/test_websocket.py", "tests/test_http_request.py", "tests/test_http_response.py"),
    ),
}

# Their tests that do not run against the tuned classes, per suite: test node id (as pytest
# names it, relative to the extracted sdist) -> why. Every id must still be in their suite.
EXCLUDED: dict[str, dict[str, str]] = {
    "channels-redis": {},
    "daphne": {},
}


class SdistUnavailable(Exception):
    pass


def sdist(suite: Suite) -> Path:
    """The suite's sdist at the pinned version, from the cache or PyPI, its sha256 checked."""
    expected = suite.sha256.get(suite.version)
    if expected is None:
        raise SdistUnavailable(
            f"no sha256 pinned for the {suite.library} {suite.version} sdist: add it to "
            f"tests/parley_runtime/upstream SUITES once checked (pip download --no-deps "
            f"--no-binary :all: {suite.library}=={suite.version})"
        )
    name = f"{suite.library.replace('-', '_')}-{suite.version}.tar.gz"
    cached = CACHE / name
    if not cached.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            result = subprocess.run(
                [
                    *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"),
                    *(":all:", "--disable-pip-version-check", "-q", "-d", tmp),
                    f"{suite.library}=={suite.version}",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            downloaded = Path(tmp) / name
            if result.returncode != 0 or not downloaded.exists():
                raise SdistUnavailable(
                    f"pip download {suite.library}=={suite.version} failed: "
                    f"{result.stderr.strip()[-500:]}"
                )
            os.replace(downloaded, cached)  # whole or not at all, for concurrent runs
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    if digest != expected:
        cached.unlink()
        raise SdistUnavailable(
            f"{name} has sha256 {digest}, pinned {expected}: not using it (deleted from "
            f"the cache; the next run downloads it again)"
        )
    return cached


def extract(suite: Suite, into: Path) -> Path:
    """The sdist's tests (and the files pytest reads its configuration from) under `into`;
    returns the extracted root."""
    root = f"{suite.library.replace('-', '_')}-{suite.version}"
    keep = ("tests/", "setup.cfg", "pyproject.toml", "tox.ini", "pytest.ini")
    with tarfile.open(sdist(suite)) as tar:
        members = [
            member
            for member in tar.getmembers()
            if member.isfile() and member.name.removeprefix(root + "/").startswith(keep)
        ]
        tar.extractall(into, members=members, filter="data")
    return into / root
