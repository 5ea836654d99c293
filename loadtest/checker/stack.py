"""The checker's private native stack: nginx -> gunicorn + two daphne (deploy/stack/stackctl.py,
the code `make stack` runs), on a Redis and a Postgres of its own (throwaway instances on free
ports, tests/redis_server.py and tests/pg_server.py), so it can restart them. Never the
machine's shared Redis or Postgres.

Each fault here returns only once the stack is whole again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg

from deploy.stack.stackctl import REPO, Stack, StackConfig, StackError
from tests.pg_server import PG_BIN, ThrowawayPostgres
from tests.redis_server import ThrowawayRedis

DB_NAME = "parley_checker"
# A process (re)started must be healthy within this long: on a 2-core machine busy with other
# suites a whole stack takes over a minute to start.
HEALTHY_TIMEOUT = 240.0


def ports(base: int) -> dict:
    """nginx base+80, gunicorn base, daphne base+1 and base+2, metrics base+1000."""
    return {
        "nginx_port": base + 80,
        "web_port": base,
        "ws_ports": (base + 1, base + 2),
        "metrics_port": base + 1000,
    }


class ChaosStack:
    def __init__(self, name: str, port_base: int, runtime: str, env: dict[str, str]) -> None:
        self.redis = ThrowawayRedis()
        self.pg: ThrowawayPostgres | None = None
        self.runtime = runtime
        self.run_dir = REPO / "run" / f"checker-{name}"
        self.port_base = port_base
        self.extra_env = env
        self.stack: Stack | None = None
        self.dumps = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.pg = ThrowawayPostgres()  # initdb
        self.redis.start()
        self.pg.start()
        env = {
            "PARLEY_RUNTIME": self.runtime,
            "PASSWORD_HASHERS": "django.contrib.auth.hashers.MD5PasswordHasher",
            "LOG_LEVEL": "INFO",
            "WAIT_FOR_DEPS_TIMEOUT": "30",
            "CHANNEL_LAYER_PREFIX": "asgi",
            "REDIS_KEY_PREFIX": "parley",
            **self.extra_env,
        }
        self.stack = Stack(
            StackConfig(
                run_dir=self.run_dir,
                database_url=f"postgres://postgres@127.0.0.1:{self.pg.port}/{DB_NAME}",
                redis_url=f"redis://127.0.0.1:{self.redis.port}/0",
                env=env,
                **ports(self.port_base),
            )
        )
        self.stack.down()  # a previous run's leftovers (its recorded pids only)
        self.stack.up(fresh_db=True, timeout=HEALTHY_TIMEOUT)

    def stop(self) -> None:
        try:
            if self.stack is not None:
                self.stack.down()
        finally:
            self.redis.stop()
            shutil.rmtree(self.redis.dir, ignore_errors=True)
            if self.pg is not None:
                self.pg.destroy()

    # --- addresses and data ------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.stack is not None
        return self.stack.url

    @property
    def web_url(self) -> str:
        assert self.stack is not None
        return f"http://127.0.0.1:{self.stack.config.web_port}"

    @property
    def database_url(self) -> str:
        assert self.stack is not None
        return self.stack.config.database_url

    def describe(self) -> str:
        assert self.stack is not None and self.pg is not None
        c = self.stack.config
        return (
            f"nginx :{c.nginx_port} -> gunicorn :{c.web_port}, daphne :{c.ws_ports[0]} "
            f":{c.ws_ports[1]} ({self.runtime} runtime); own Redis :{self.redis.port}, own "
            f"Postgres :{self.pg.port}; logs in {self.stack.log_dir}"
        )

    def seed(self, rooms: int, members: int, password: str) -> list[dict]:
        assert self.stack is not None
        return json.loads(self.stack.seed(rooms, members, password, prefix="ck").read_text())

    def sql(self, query: str, params: list | None = None) -> list[tuple]:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    # --- processes ---------------------------------------------------------------------------

    @property
    def ws_names(self) -> list[str]:
        assert self.stack is not None
        return self.stack.ws_names

    def kill_ws(self, i: int, sig: int) -> int | None:
        """Signals daphne #i and waits for it to exit; its exit code."""
        assert self.stack is not None
        name = self.ws_names[i]
        popen = self.stack.popens.get(name)
        self.stack.send_signal(name, sig)
        if not self.stack.wait_exit(name, 30):
            raise StackError(f"{name} still running 30 s after signal {sig}")
        code = popen.poll() if popen else None
        self.stack.stop_process(name, sig=None, timeout=1)  # reaps it and any workers left
        return code

    def pause_ws(self, i: int, seconds: float) -> None:
        assert self.stack is not None
        name = self.ws_names[i]
        self.stack.send_signal(name, signal.SIGSTOP)
        try:
            time.sleep(seconds)  # the pause
        finally:
            self.stack.send_signal(name, signal.SIGCONT)

    def start_process(self, name: str) -> None:
        assert self.stack is not None
        if not self.stack.alive(name):
            self.stack.spawn(name)
        self.stack.wait_healthy([name], timeout=HEALTHY_TIMEOUT)

    def alive(self, name: str) -> bool:
        assert self.stack is not None
        return self.stack.alive(name)

    def redis_alive(self) -> bool:
        return self.redis.proc is not None and self.redis.proc.poll() is None

    def restart_redis(self, down: float) -> None:
        self.redis.stop()
        time.sleep(down)  # the outage
        self.redis.start()

    def pg_alive(self) -> bool:
        assert self.pg is not None
        return (
            subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.pg.port)],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )

    def restart_pg(self, down: float) -> None:
        assert self.pg is not None
        self.pg.kill()  # immediate: connections dropped, as a crash
        time.sleep(down)  # the outage
        self.pg.start()

    def ensure_whole(self) -> list[str]:
        """Starts whatever is not running; returns what that was."""
        assert self.stack is not None
        fixed = []
        if not self.redis_alive():
            self.redis.start()
            fixed.append("redis")
        if not self.pg_alive():
            assert self.pg is not None
            self.pg.start()
            fixed.append("postgres")
        for name in ("web", *self.ws_names, "nginx"):
            if not self.stack.alive(name):
                self.start_process(name)
                fixed.append(name)
        return fixed

    # --- backup and restore (as `make backup` / `make restore` do) ---------------------------

    def dump(self) -> Path:
        self.dumps += 1
        path = self.run_dir / f"checker-{self.dumps}.dump"
        subprocess.run(
            [
                str(PG_BIN / "pg_dump"),
                "--format=custom",
                f"--file={path}",
                f"--dbname={self.database_url}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return path

    def stop_writers(self) -> None:
        """Nothing may write while the database is replaced: web and both daphne stop
        (SIGTERM: daphne drains, closing its sockets with 1012)."""
        assert self.stack is not None
        names = ["web", *self.ws_names]
        for name in names:
            self.stack.send_signal(name, signal.SIGTERM)
        for name in names:
            self.stack.stop_process(name, sig=None, timeout=30)

    def restore(self, dump: Path) -> None:
        """pg_restore of the dump over the database, then history_new_epoch. (`make restore`
        runs migrate before it, for a dump of an older schema; this dump is of this one.)"""
        assert self.stack is not None
        subprocess.run(
            [
                str(PG_BIN / "pg_restore"),
                "--exit-on-error",
                "--single-transaction",
                "--no-owner",
                "--no-privileges",
                "--clean",
                "--if-exists",
                f"--dbname={self.database_url}",
                str(dump),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        self.stack.run_manage(["history_new_epoch"])

    def start_writers(self) -> None:
        assert self.stack is not None
        names = ["web", *self.ws_names]
        for name in names:
            if not self.stack.alive(name):
                self.stack.spawn(name)
        self.stack.wait_healthy(names, timeout=HEALTHY_TIMEOUT)

    # --- logs --------------------------------------------------------------------------------

    def log_errors(self) -> dict[str, Counter]:
        """ERROR and CRITICAL records of each process log: (message, exception) -> count."""
        assert self.stack is not None
        out: dict[str, Counter] = {}
        for name in ("web", *self.ws_names):
            counts: Counter = Counter()
            with contextlib.suppress(OSError):
                for line in self.stack.log_path(name).read_text(errors="replace").splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(record, dict):
                        continue
                    level = str(record.get("level") or "").upper()
                    if level not in ("ERROR", "CRITICAL"):
                        continue
                    exc = record.get("exc") or ""
                    last = str(exc).strip().splitlines()[-1] if exc else ""
                    counts[(str(record.get("msg")), last[:200])] += 1
            if counts:
                out[name] = counts
        return out
