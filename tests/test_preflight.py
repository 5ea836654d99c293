"""tests/preflight.py, tests/tiers.py and `make test`'s closing summary, on real processes and
ports: a dependency missing is named with the command that gets it, Redis absent is started,
and a tier that did not run for want of something fails `make test` unless SKIP_TIERS
leaves it out on purpose."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import free_port
from tests.tiers import TIERS_NOT_RUN, missing

REPO = Path(__file__).resolve().parent.parent
# Settings of an enclosing run that the runs started here must not inherit.
OUTER = (
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "PARLEY_PREFLIGHT",
    "PARLEY_TIER_REPORT",
    "PARLEY_TEST_LANE",
    "PARLEY_RUNTIME",
    "SKIP_TIERS",
    "DATABASE_URL",
    "REDIS_URL",
    "CHROMIUM",
    "PYTEST_ADDOPTS",
)


def env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in OUTER}, **extra}


@pytest.fixture
def not_root() -> Iterator[list[str]]:
    """The command that runs `python -m tests.preflight` as a user who is not root: this
    one, or `nobody` (through setpriv, with Debian's python3 and a copy of the modules the
    preflight imports, since a root checkout and virtualenv may be unreadable to others)."""
    if os.geteuid() != 0:
        yield [sys.executable, "-m", "tests.preflight"]
        return
    python = shutil.which("python3", path="/usr/bin:/bin")
    if not python or not shutil.which("setpriv"):
        missing("python3 and setpriv", "needed to run the preflight as a user other than root")
    nobody = pwd.getpwnam("nobody")
    copy = Path(tempfile.mkdtemp(prefix="parley-preflight-"))
    try:
        (copy / "tests").mkdir()
        for name in ("__init__.py", "apt.py", "instance.py", "preflight.py"):
            shutil.copy(REPO / "tests" / name, copy / "tests" / name)
        for path in (copy, *copy.rglob("*")):
            path.chmod(0o755)
        yield [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "env",
            f"PYTHONPATH={copy}",
            "HOME=/nonexistent",
            python,
            "-m",
            "tests.preflight",
        ]
    finally:
        shutil.rmtree(copy)


def preflight(argv: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        cwd="/",
        env=env(PYTHONPATH=str(REPO), **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_binary_is_named_with_the_command_that_installs_it(not_root):
    absent = f"/nonexistent/chromium-{os.getpid()}"
    result = preflight([*not_root, "chromium"], CHROMIUM=absent)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert f"Chromium             MISSING   {absent} is not installed" in out, out
    assert "run: sudo apt-get install -y chromium" in out, out
    assert "preflight: tiers that would not run (fully): browser" in out, out


def test_postgres_absent_without_root_says_what_would_start_it(not_root):
    port = free_port()  # nothing listens there
    result = preflight(
        [*not_root, "postgres"], DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/x"
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert f"Postgres             MISSING   nothing answers on 127.0.0.1:{port}" in out, out
    # Either the package to install or the cluster to create: as a command, with sudo.
    assert "run: sudo apt-get install -y postgresql" in out or (
        "run: sudo pg_createcluster" in out and f"--port {port} --start" in out
    ), out
    assert "unit, k8s, stack, browser, stock" in out, out


def test_redis_absent_is_started_on_its_port():
    if not shutil.which("redis-server"):
        missing("redis-server", "not installed")
    port = free_port()
    result = preflight(
        [sys.executable, "-m", "tests.preflight", "redis"], TEST_REDIS_PORT=str(port)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    client = redis.Redis(port=port, socket_connect_timeout=2)
    pid = client.info("server")["process_id"]
    try:
        assert f"Redis                started   127.0.0.1:{port} answers PING" in result.stdout
        assert client.ping()
        assert client.config_get("save") == {"save": ""}  # keeps nothing on disk
    finally:
        os.kill(pid, signal.SIGKILL)


TEST_FILE = """
import pytest
from tests.tiers import missing

def test_ran():
    pass

def test_for_one_runtime_only():
    pytest.skip("applies to the tuned runtime only")

@pytest.mark.parametrize("n", [1, 2])
def test_needs_a_widget(n):
    missing("widget", "no widget here", "apt-get install widget")
"""


def run_tiers_plugin(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """pytest with tests/tiers.py on a file of its own; the preflight it is handed says all
    that the tier (unit) needs was found, so what counts is what the tests find."""
    (tmp_path / "test_widget.py").write_text(TEST_FILE)
    found = [{"name": "Postgres", "state": "found", "detail": "", "tiers": ["unit"]}]
    (tmp_path / "preflight.json").write_text(json.dumps(found))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            "/dev/null",
            "-p",
            "no:django",
            "-p",
            "tests.tiers",
            "-q",
            *args,
        ],
        cwd=tmp_path,
        env=env(
            PYTHONPATH=str(REPO),
            PARLEY_PREFLIGHT=str(tmp_path / "preflight.json"),
            PARLEY_TIER_REPORT=str(tmp_path / "report.json"),
            **extra,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_test_that_finds_a_dependency_missing_fails_the_run(tmp_path):
    result = run_tiers_plugin(tmp_path, "test_widget.py")
    assert result.returncode == TIERS_NOT_RUN, result.stdout
    assert "unit: 2 of 4 tests: widget missing: no widget here (run: apt-get install widget)" in (
        result.stdout
    ), result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"] == {"unit": {"passed": 1, "failed": 0, "skipped": 3}}
    assert report["not_run"]["unit"]["widget"]["tests"] == 2


def test_an_ordinary_skip_is_no_missing_dependency(tmp_path):
    result = run_tiers_plugin(tmp_path, "test_widget.py", "-k", "not needs")
    assert result.returncode == 0, result.stdout
    assert "tiers not run" not in result.stdout
    assert json.loads((tmp_path / "report.json").read_text())["not_run"] == {}


def test_skip_tiers_leaves_a_tier_out_and_names_only_tiers(tmp_path):
    result = run_tiers_plugin(tmp_path, "test_widget.py", SKIP_TIERS="unit")
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout
    assert "unit: not run, on request (SKIP_TIERS): 4 tests" in result.stdout
    result = run_tiers_plugin(tmp_path, "test_widget.py", SKIP_TIERS="unit,widgets")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "SKIP_TIERS names no such tier: widgets" in result.stderr


def make_test(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "test", *args],
        cwd=REPO,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_make_test_fails_when_a_tier_did_not_run_unless_skipped_on_request():
    """Postgres absent (a port nothing listens on, no cluster set up for it): the k8s tier
    needs it, so `make test` names it, does not run the tier and fails; with SKIP_TIERS=k8s
    the same run passes, and says the tier was left out on request."""
    dead = f"postgres://postgres@127.0.0.1:{free_port()}/x"
    narrow = "PYTEST_ARGS=tests/k8s/test_manifests.py"
    # REDIS_URL: none of the outer run's keys for the inner run to touch (k8s needs none).
    quiet_redis = f"redis://127.0.0.1:{free_port()}/0"
    result = make_test(narrow, DATABASE_URL=dead, REDIS_URL=quiet_redis)
    out = result.stdout
    summary = out[out.index("=== make test: summary") :]
    assert result.returncode != 0, out
    assert "  k8s         NOT RUN, missing: Postgres" in summary, summary
    assert "missing:\n  Postgres: nothing answers on 127.0.0.1:" in summary, summary
    assert "make test SKIP_TIERS=k8s" in summary, summary
    assert summary.rstrip().splitlines()[-1].startswith("tests: 0 passed, 0 failed, "), summary

    result = make_test(narrow, "SKIP_TIERS=k8s", DATABASE_URL=dead, REDIS_URL=quiet_redis)
    summary = result.stdout[result.stdout.index("=== make test: summary") :]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  k8s         skipped on request (SKIP_TIERS)" in summary, summary
    assert "make test: passed" in summary, summary
