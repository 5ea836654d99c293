"""`manage.py wait_for_deps`: succeeds when Postgres and Redis answer; otherwise logs one line
per attempt naming the dependency, and fails with a clear message at its timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from deploy.stack.stackctl import REPO

pytestmark = pytest.mark.slow


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_deps(timeout: float, **env: str) -> tuple[int, list[dict], str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "src" / "manage.py"),
            "wait_for_deps",
            "--timeout",
            str(timeout),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "LOG_LEVEL": "INFO", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    # The command's own lines (every process also logs its runtime selection at startup).
    lines = [record for record in records if record["logger"] == "parley.wait_for_deps"]
    return result.returncode, lines, result.stderr, time.monotonic() - started


def test_succeeds_at_once_when_both_answer():
    code, lines, stderr, _ = wait_for_deps(
        5, DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    )
    assert code == 0, stderr
    assert [line["msg"].split(" is up")[0] for line in lines] == ["database", "redis[0]"]


def test_retries_with_a_log_line_and_gives_up_at_the_timeout():
    port = closed_port()
    code, lines, stderr, elapsed = wait_for_deps(
        2,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
    )
    assert code == 1
    assert "redis[0] still unavailable after 2s" in stderr
    waits = [line for line in lines if line["msg"].startswith("waiting for redis[0]")]
    assert len(waits) >= 2  # it retried
    assert all(line["level"] == "WARNING" and "Connection refused" in line["msg"] for line in waits)
    assert elapsed < 20  # bounded: the timeout plus interpreter start-up


def test_a_database_that_is_down_is_named():
    port = closed_port()
    code, lines, stderr, _ = wait_for_deps(
        1, DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/nope"
    )
    assert code == 1
    assert "database still unavailable" in stderr
    assert any(line["msg"].startswith("waiting for database (attempt 1)") for line in lines)


def test_a_server_allowing_fewer_connections_than_the_budget_is_named():
    """DB_MAX_CONNECTIONS is what the deployment's pools were sized for (docs/kubernetes.md,
    "Connection budget"); a server with a lower max_connections fails logins only at full
    scale."""
    code, lines, stderr, _ = wait_for_deps(
        5, DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres", DB_MAX_CONNECTIONS="100000"
    )
    assert code == 0, stderr
    warned = [line for line in lines if "DB_MAX_CONNECTIONS=100000" in line["msg"]]
    assert len(warned) == 1 and warned[0]["level"] == "WARNING"
