"""A real websocket server for a test: `python -m config.serve_ws` (the ws role as deployed:
daphne with Parley's runtime, frame limits and drain) on a free port, on a database and Redis
key prefix of its own, on either runtime. What the protocol touches (frame sizes, close
codes) is only seen through it: the test communicator never passes through autobahn.

    with ServeWs(tmp_path, runtime="stock", env={"CHAT_MAX_FRAME_BYTES": "8192"}) as server:
        users = server.seed(rooms=1, members=2)
        sock = server.socket(users[0])      # a tests.helpers.wsclient.ChatSocket
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import requests

from tests._env import RUN_TAG
from tests.helpers.wsclient import ChatSocket
from tests.redis_server import delete_keys, free_port
from tests.stack.harness import login, wait_until

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "serve-ws-test-1"  # noqa: S105


class ServeWs:
    def __init__(self, tmp: Path, runtime: str = "tuned", env: dict[str, str] | None = None):
        self.tmp = tmp
        self.runtime = runtime
        self.name = f"parley_sws_{RUN_TAG}_{uuid.uuid4().hex[:6]}"
        self.admin_url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
        self.prefix = f"sws{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": self.admin_url.rsplit("/", 1)[0] + "/" + self.name,
            "PYTHONPATH": str(REPO / "src"),
            "CHANNEL_LAYER_PREFIX": self.prefix,
            "REDIS_KEY_PREFIX": self.prefix,
            "PARLEY_RUNTIME": runtime,
            "WS_BIND": "127.0.0.1",
            "WS_PORT": str(self.port),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"serve_ws-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServeWs:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.manage("migrate", "--noinput", "-v0")
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        delete_keys([self.prefix])

    def start(self) -> None:
        log = open(self.log, "a")  # noqa: SIM115 (the process keeps it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "config.serve_ws"], env=self.env, stdout=log, stderr=log
        )

        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                return requests.get(self.base_url + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 60, "serve_ws to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def manage(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, str(REPO / "src" / "manage.py"), *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
        )
        return out.stdout

    def shell(self, code: str) -> str:
        """Runs Django code against this server's database and Redis (another process, as a
        web worker or a second daphne would be); returns what it prints."""
        return self.manage("shell", "-c", code)

    def seed(self, rooms: int = 1, members: int = 2, prefix: str = "u", messages: int = 0):
        out = self.tmp / f"users-{uuid.uuid4().hex[:6]}.json"
        self.manage(
            "seed_loadtest",
            "--rooms", str(rooms),
            "--members", str(members),
            "--password", PASSWORD,
            "--prefix", prefix,
            "--messages", str(messages),
            "--out", str(out),
        )  # fmt: skip
        return json.loads(out.read_text())

    def cookies(self, user: dict) -> dict:
        return login(self.base_url, user["username"], user["password"]).cookies.get_dict()

    def socket(self, user: dict, cookies: dict | None = None) -> ChatSocket:
        return ChatSocket(
            f"ws://127.0.0.1:{self.port}",
            self.base_url,
            user["conversation"],
            cookies or self.cookies(user),
        )
