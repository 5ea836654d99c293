"""A private native stack for tests: nginx, gunicorn and two daphne as real processes.

Reusable by any test suite: give it its own ports, database and Redis db index.

    stack = Stack(name="serving", nginx_port=18080, web_port=18000, ws_ports=(18001, 18002),
                  redis_db=4)
    with stack.started():    # fresh database, migrations, processes up and healthy
        ...                  # and on the way out: stack.stop()
    stack.start()            # the same by hand
    stack.url                # http://127.0.0.1:18080 (nginx; https://... with https_port=)
    stack.kill_ws(0, signal.SIGTERM)   # daphne #0 (ws_ports[0]); waits for it to exit
    stack.restart_ws(0)
    stack.stop()             # processes gone, database dropped, Redis db flushed

Process management lives in deploy/stack/stackctl.py, the same code `make stack` runs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import redis
import requests

from deploy.stack.stackctl import REPO, StackConfig, StackError
from deploy.stack.stackctl import Stack as _Stack
from tests import instance

__all__ = ["Stack", "StackError", "login", "make_certs", "session_trusting", "wait_until"]


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    """Polls `predicate` until it returns something truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def child_pids(parent: int) -> set[int]:
    """The processes whose parent is `parent` (nginx's workers, gunicorn's)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.add(int(stat.parent.name))
    return children


def login(
    base_url: str, username: str, password: str, verify: str | bool = True
) -> requests.Session:
    """Logs in the way a browser does: GET the form (CSRF cookie + field), POST it.
    `verify`: the CA bundle for an https stack with a self-signed certificate."""
    session = session_trusting(verify)
    page = session.get(f"{base_url}/accounts/login/", timeout=10)
    page.raise_for_status()
    token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    response = session.post(
        f"{base_url}/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{base_url}/accounts/login/", "Origin": base_url},
        allow_redirects=False,
        timeout=10,
    )
    if response.status_code != 302 or "sessionid" not in session.cookies:
        raise AssertionError(f"login of {username} failed: {response.status_code}")
    return session


def make_certs(out: Path, host: str = "localhost") -> subprocess.CompletedProcess:
    """`make certs` into `out`: deploy/tls/make-certs.sh, a self-signed pair for `host`."""
    return subprocess.run(
        [str(REPO / "deploy" / "tls" / "make-certs.sh"), host, str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def session_trusting(verify: str | bool = True) -> requests.Session:
    """A requests session; with a CA bundle path, one that verifies against that bundle
    only. (requests lets REQUESTS_CA_BUNDLE from the environment override session.verify,
    so the environment is not consulted: loopback needs no proxy settings either.)"""
    session = requests.Session()
    session.verify = verify
    if isinstance(verify, str):
        session.trust_env = False
    return session


class Stack(_Stack):
    def __init__(
        self,
        name: str = "serving",
        nginx_port: int = 18080,
        web_port: int = 18000,
        ws_ports: tuple[int, int] = (18001, 18002),
        redis_db: int = 4,
        env: dict[str, str] | None = None,
        web_workers: int = 2,
        metrics_port: int | None = None,
        https_port: int | None = None,
        cert_dir: Path | None = None,
        pgbouncer_port: int | None = None,
        pgbouncer_pool: int = 4,
    ) -> None:
        self.db_name = f"parley_stacktest_{name}{instance.SUFFIX}"
        self.redis_url = instance.redis_url(redis_db)
        nginx_port, web_port = instance.port(nginx_port), instance.port(web_port)
        ws_ports = tuple(instance.port(p) for p in ws_ports)
        defaults = {
            # Fast logins (the stack is a test fixture), INFO so access lines are logged.
            "PASSWORD_HASHERS": "django.contrib.auth.hashers.MD5PasswordHasher",
            "LOG_LEVEL": "INFO",
            # Long enough to observe /readyz 503 on a draining daphne before it stops
            # listening; production default is 0.
            "WS_DRAIN_DELAY": "2",
            "CHAT_DRAIN_SECONDS": "5",
            "DB_POOL_MAX_SIZE": "4",
            "WAIT_FOR_DEPS_TIMEOUT": "30",
        }
        super().__init__(
            StackConfig(
                run_dir=REPO / "run" / f"stacktest-{name}{instance.SUFFIX}",
                nginx_port=nginx_port,
                web_port=web_port,
                ws_ports=ws_ports,
                database_url=f"{instance.POSTGRES}/{self.db_name}",
                redis_url=self.redis_url,
                web_workers=web_workers,
                metrics_port=metrics_port or web_port + 1000,
                env={**defaults, **(env or {})},
                # TLS mode when given an https port (and the certificate's directory).
                tls=https_port is not None,
                https_port=instance.port(https_port) if https_port else 8443,
                cert_dir=cert_dir or REPO / "certs",
                # PgBouncer in front of Postgres when given a port for it.
                pgbouncer_port=instance.port(pgbouncer_port) if pgbouncer_port else 0,
                pgbouncer_pool=pgbouncer_pool,
            )
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.config.metrics_port}/metrics"

    @property
    def processes(self) -> int:
        """Processes that hold database pools: gunicorn workers plus the daphnes."""
        return self.config.web_workers + len(self.config.ws_ports)

    @property
    def pool_size(self) -> int:
        return int(self.config.env["DB_POOL_MAX_SIZE"])

    @property
    def connection_limit(self) -> int:
        """Every process's pool, and each daphne's store connections (parley.loopdb); behind
        PgBouncer, its pool alone, however many clients it serves."""
        if self.config.pgbouncer_port:
            return self.config.pgbouncer_pool
        stores = int(self.config.env.get("CHAT_DB_STORE_CONNECTIONS", "2"))
        return self.processes * self.pool_size + len(self.config.ws_ports) * stores

    def start(self) -> None:
        self.down()  # a previous run's leftovers (recorded pids only)
        redis.Redis.from_url(self.redis_url).flushdb()
        self.up(fresh_db=True)

    @contextlib.contextmanager
    def started(self) -> Iterator[Stack]:
        """The stack, started fresh; stopped on the way out (processes gone, database
        dropped), a start that failed half-way included."""
        try:
            self.start()
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        self.down()
        try:
            self.drop_database()
        finally:
            redis.Redis.from_url(self.redis_url).flushdb()

    # --- addresses ------------------------------------------------------------------------

    @property
    def ws_base(self) -> str:
        return self.url.replace("http", "ws", 1)  # ws:// or wss://

    def ws_port(self, i: int) -> int:
        return self.config.ws_ports[i]

    def web_url(self) -> str:
        """gunicorn directly (not through nginx): for test set-up such as many logins,
        which nginx would rate limit."""
        return f"http://127.0.0.1:{self.config.web_port}"

    # --- websocket processes --------------------------------------------------------------

    def kill_ws(
        self, i: int, sig: int = signal.SIGTERM, wait: bool = True, timeout: float = 15.0
    ) -> int | None:
        """Signals daphne #i (0-based); with `wait`, returns its exit code once it exited."""
        self.send_signal(self.ws_names[i], sig)
        return self.wait_ws_exit(i, timeout) if wait else None

    def wait_ws_exit(self, i: int, timeout: float = 15.0) -> int | None:
        """Waits for daphne #i to exit; its exit code (-N for signal N)."""
        name = self.ws_names[i]
        if not self.wait_exit(name, timeout):
            raise AssertionError(f"{name} still running after {timeout:g}s")
        popen = self.popens.get(name)
        return popen.wait(timeout=1) if popen else None

    def restart_ws(self, i: int, env: dict[str, str] | None = None) -> None:
        name = self.ws_names[i]
        if self.alive(name):
            self.stop_process(name)
        self.spawn(name, env)
        self.wait_healthy([name], timeout=60)

    # --- logs and database ----------------------------------------------------------------

    def log_records(self, name: str) -> list[dict]:
        records = []
        for line in self.log_path(name).read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a non-JSON line (e.g. a traceback from the interpreter itself)
        return records

    def find_log(self, name: str, predicate: Callable[[dict], bool]) -> dict | None:
        return next((r for r in self.log_records(name) if predicate(r)), None)

    def sql(self, query: str, params: list | None = None) -> list[tuple]:
        with psycopg.connect(self.config.database_url, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def app_connections(self) -> int:
        """The app's rows in pg_stat_activity (from another database, so this probe does
        not count itself)."""
        admin = self.config.database_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.db_name]
            ).fetchone()
        return int(row[0])

    def seed(self, rooms: int, members: int, password: str, prefix: str) -> list[dict]:
        return json.loads(super().seed(rooms, members, password, prefix).read_text())
