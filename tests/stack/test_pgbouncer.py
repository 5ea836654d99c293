"""PgBouncer in transaction pooling between the app and Postgres (deploy/pgbouncer): a native
stack whose gunicorn workers and daphne reach Postgres only through a real PgBouncer with a
pool of four server connections, however many clients they open (2 workers x 4 + 2 daphne x
(4 + 2 store connections) = 20)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from tests.helpers.wsclient import ChatSocket
from tests.stack.conftest import cookie_jar, seeded_rooms
from tests.stack.harness import Stack
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
