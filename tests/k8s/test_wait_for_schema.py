"""The rollout gate: web and ws pods' wait-for-schema initContainer, run as rendered, against a
real Postgres database. It must keep waiting while migrations are missing and let the pod
start once the migrate Job has applied them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.k8s.render import REPO, build, stage

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def database() -> Iterator[str]:
    name = f"parley_k8s_schema_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def init_command(tmp_path: Path) -> list[str]:
    docs = build(stage(tmp_path) / "k8s" / "overlays" / "dev")
    web = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "web")
    (init,) = web["spec"]["template"]["spec"]["initContainers"]
    return init["command"]


def env_for(database_url: str) -> dict[str, str]:
    # The image's PATH puts its virtualenv first; here that is this interpreter's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "DATABASE_URL": database_url, "PATH": path, "LOG_LEVEL": "ERROR"}


@pytest.mark.slow
def test_wait_for_schema_blocks_until_migrations_are_applied(tmp_path: Path, database: str) -> None:
    command, env = init_command(tmp_path), env_for(database)
    waiting = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        # "Not applied yet", and still running: it waits rather than failing the pod.
        line = waiting.stdout.readline()
        assert "wait-for-schema: migrations not applied yet" in line
        assert waiting.poll() is None
    finally:
        os.killpg(waiting.pid, signal.SIGKILL)
        waiting.wait(timeout=10)

    subprocess.run(
        [sys.executable, "src/manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wait-for-schema" not in done.stdout
