"""PgBouncer in transaction pooling between the app and Postgres (deploy/pgbouncer): a native
stack whose gunicorn workers and daphne reach Postgres only through a real PgBouncer with a
pool of four server connections, however many clients they open (2 workers x 4 + 2 daphne x
(4 + 2 store connections) = 20)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from deploy.pgbouncer import config as pgbouncer_config
from deploy.stack import stackctl
from tests.helpers.wsclient import ChatSocket
from tests.stack.conftest import cookie_jar, seeded_rooms
from tests.stack.harness import Stack, wait_until
from tests.stack.test_db_connections import churn_and_chat

pytestmark = [pytest.mark.stack, pytest.mark.slow]

POOL = 4


@pytest.fixture(scope="module")
def pooled() -> Iterator[Stack]:
    stack = Stack(
        name="pgbouncer",
        nginx_port=18480,
        web_port=18400,
        ws_ports=(18401, 18402),
        redis_db=10,
        pgbouncer_port=18432,
        pgbouncer_pool=POOL,
    )
    with stack.started():
        yield stack


@pytest.fixture(scope="module")
def pooled_rooms(pooled) -> dict[int, list[str]]:
    return seeded_rooms(pooled, 8, "pgb")


@pytest.fixture(scope="module")
def pooled_cookies(pooled):
    return cookie_jar(pooled)


def server_connections(stack: Stack) -> int:
    admin = stack.config.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [stack.db_name]
        ).fetchone()
    return int(row[0])


def test_the_app_reaches_postgres_only_through_pgbouncer(pooled):
    through = f":{pooled.config.pgbouncer_port}/{pooled.db_name}"
    assert pooled.config.app_database_url.endswith(through)
    assert requests.get(f"http://127.0.0.1:{pooled.config.web_port}/readyz", timeout=10).json()[
        "ready"
    ]
    assert 0 < server_connections(pooled) <= POOL


def test_sends_from_every_room_at_once_are_stored_once_each_in_order(
    pooled, pooled_rooms, pooled_cookies
):
    """Eight rooms' members send at once on both daphne: the stores (batched or not), the
    handshake reads and the page renders share four server connections; every message is
    stored once, numbered without a hole, and reaches the other members in order."""
    rooms = list(pooled_rooms.items())[:6]
    per_member = 15
    sockets: dict[str, ChatSocket] = {}
    for conversation_id, members in rooms:
        for username in members:
            sockets[username] = ChatSocket(
                pooled.ws_base, pooled.url, conversation_id, pooled_cookies(username)
            ).connect()

    def send_all(username: str) -> list[str]:
        sock, ids = sockets[username], []
        for i in range(per_member):
            client_id = str(uuid.uuid4())
            sock.send(f"{username} {i}", client_id=client_id)
            ids.append(client_id)
        return ids

    try:
        with ThreadPoolExecutor(len(sockets)) as pool:
            sent = dict(zip(sockets, pool.map(send_all, sockets), strict=True))
        total_per_room = 3 * per_member
        for _conversation_id, members in rooms:
            for username in members:
                sockets[username].wait_seq(total_per_room, timeout=60)
                assert sockets[username].seqs == list(range(1, total_per_room + 1))
        admin = pooled.config.database_url
        with psycopg.connect(admin) as conn:
            for conversation_id, members in rooms:
                rows = conn.execute(
                    "SELECT seq, client_id::text FROM chat_message WHERE conversation_id = %s "
                    "ORDER BY seq",
                    [conversation_id],
                ).fetchall()
                assert [seq for seq, _ in rows] == list(range(1, total_per_room + 1))
                expected = {cid for username in members for cid in sent[username]}
                assert {cid for _, cid in rows} == expected
        assert server_connections(pooled) <= POOL
    finally:
        for sock in sockets.values():
            sock.close()


def test_connections_stay_within_pgbouncer_s_pool_under_socket_churn_and_chat(
    pooled, pooled_rooms, pooled_cookies
):
    """The churn of tests/stack/test_db_connections.py, through PgBouncer: Postgres sees at
    most its pool of four, where the app holds up to twenty client connections."""
    conversation_id = list(pooled_rooms)[-1]
    room = (conversation_id, pooled_rooms[conversation_id])
    assert pooled.connection_limit == POOL
    churn_and_chat(pooled, room, pooled_cookies, 300)


# --- the renderer every layout runs (deploy/pgbouncer/config.py) ----------------------------


@contextlib.contextmanager
def pgbouncer_running(ini: Path, port: int) -> Iterator[subprocess.Popen]:
    """A real PgBouncer on `ini`, as the stack runs it; stopped on exit."""
    proc = subprocess.Popen(  # noqa: S603
        stackctl.pgbouncer_argv(ini), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        return stackctl._port_open(port)

    try:
        wait_until(listening, 15, "PgBouncer listening")
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_password_in_the_server_url_makes_clients_prove_it(tmp_path):
    """With the server's password in its URL, PgBouncer asks clients for the same password
    (SCRAM) and refuses a wrong one with an error that says so; the right one reaches the
    server. The local server trusts any password, so only PgBouncer can refuse here."""
    port = 18433
    ini = pgbouncer_config.render(
        server_url="postgres://postgres:s3cret-pw@127.0.0.1:5432/postgres",
        directory=tmp_path,
        listen_addr="127.0.0.1",
        listen_port=port,
        pool_size=2,
    )
    text = ini.read_text()
    assert "auth_type = scram-sha-256" in text
    assert f"%include {pgbouncer_config.POLICY}" in text
    assert oct((tmp_path / "users.txt").stat().st_mode & 0o777) == "0o600"
    through = f"postgres://postgres:{{}}@127.0.0.1:{port}/postgres"
    with pgbouncer_running(ini, port):
        with psycopg.connect(through.format("s3cret-pw"), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
            psycopg.connect(through.format("wrong"), connect_timeout=5)


@pytest.mark.parametrize(
    ("server_url", "pool_size", "port", "message"),
    [
        ("mysql://u:p@db/x", 4, 6432, "postgres://"),
        ("postgres://u:p@db/x", 0, 6432, "pool size must be at least 1"),
        ("postgres://u:p@db/x", 1, 70000, "listen port"),
        ("postgres://u:p@db/x?sslmode=sometimes", 1, 6432, "sslmode='sometimes'"),
    ],
)
def test_settings_pgbouncer_cannot_run_with_are_refused_by_name(
    tmp_path, server_url, pool_size, port, message
):
    with pytest.raises(pgbouncer_config.ConfigError, match=re.escape(message)):
        pgbouncer_config.render(
            server_url=server_url, directory=tmp_path, pool_size=pool_size, listen_port=port
        )


def test_the_server_s_tls_mode_carries_over_and_verify_modes_check_the_system_cas(tmp_path):
    ini = pgbouncer_config.render(
        server_url="postgres://u:p@db.example.internal:5432/parley?sslmode=verify-full",
        directory=tmp_path,
    )
    text = ini.read_text()
    assert "* = host=db.example.internal port=5432" in text
    assert "server_tls_sslmode = verify-full" in text
    assert f"server_tls_ca_file = {pgbouncer_config.SYSTEM_CA}" in text
    plain = pgbouncer_config.render(
        server_url="postgres://postgres@127.0.0.1/x", directory=tmp_path
    )
    assert "auth_type = trust" in plain.read_text()
    assert "server_tls_sslmode = disable" in plain.read_text()


def test_the_image_role_reads_its_settings_from_the_environment(tmp_path):
    env = {
        "PGBOUNCER_SERVER_URL": "postgres://parley:pw@postgres:5432/parley",
        "PGBOUNCER_POOL_SIZE": "40",
        "PGBOUNCER_POLICY": str(pgbouncer_config.POLICY),
    }
    text = pgbouncer_config.from_environment(tmp_path, env).read_text()
    assert "listen_port = 6432" in text and "default_pool_size = 40" in text
    assert "listen_addr = *" in text
    with pytest.raises(pgbouncer_config.ConfigError, match="PGBOUNCER_POOL_SIZE='many'"):
        pgbouncer_config.from_environment(tmp_path, {**env, "PGBOUNCER_POOL_SIZE": "many"})
    with pytest.raises(pgbouncer_config.ConfigError, match="PGBOUNCER_SERVER_URL"):
        pgbouncer_config.from_environment(tmp_path, {})
