"""Database connections stay bounded: CONN_MAX_AGE=0 plus psycopg's pool (DB_POOL_MAX_SIZE per
process) and each daphne's store connections (CHAT_DB_STORE_CONNECTIONS). 1,000 websocket
connect/disconnect cycles through nginx, with steady chat and page traffic alongside, never
push the app's rows in pg_stat_activity past processes x pool size + daphnes x stores."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from tests.helpers.wsclient import ChatSocket

pytestmark = [pytest.mark.stack, pytest.mark.slow]

CYCLES = 1000
CHURN_THREADS = 12


class Sampler(threading.Thread):
    """Counts the app's connections every few milliseconds, on one connection of its own to
    another database (so it never counts itself)."""

    def __init__(self, stack) -> None:
        super().__init__(daemon=True)
        self.admin_url = stack.config.database_url.rsplit("/", 1)[0] + "/postgres"
        self.db_name = stack.db_name
        self.samples: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while not self.stopping.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.db_name]
                ).fetchone()
                self.samples.append(int(row[0]))
                self.stopping.wait(0.01)


def test_db_connections_stay_bounded_under_socket_churn_and_chat(stack, room, cookies):
    churn_and_chat(stack, room, cookies, CYCLES)


def churn_and_chat(stack, room, cookies, cycles: int) -> None:
    """`cycles` websocket connect/disconnect cycles through nginx with two members chatting,
    one reading and one loading the page alongside: the app's rows in pg_stat_activity stay
    within stack.connection_limit, and the reader gets every message once, in order."""
    conversation_id, (alice, bob, carol) = room
    limit = stack.connection_limit
    sampler = Sampler(stack)
    sampler.start()
    stop = threading.Event()
    errors: list[str] = []
    sent: list[str] = []

    def chatter(username: str) -> None:
        # Two messages a second per socket: well under CHAT_RATE_LIMIT (30 per 10 s).
        sock = ChatSocket(stack.ws_base, stack.url, conversation_id, cookies(username)).connect()
        try:
            n = 0
            while not stop.is_set():
                text = f"{username} {n}"
                sock.send(text)
                sent.append(text)
                n += 1
                keep_reading(sock, 0.5)
        finally:
            sock.close()

    def keep_reading(sock: ChatSocket, seconds: float) -> None:
        # The client's reader thread answers daphne's pings meanwhile.
        sock.quiet(seconds)

    def browse() -> None:
        session = requests.Session()
        session.cookies.update(cookies(carol))
        while not stop.is_set():
            if session.get(f"{stack.url}/c/{conversation_id}", timeout=10).status_code != 200:
                errors.append("conversation page failed")

    def cycle(i: int) -> None:
        sock = ChatSocket(
            stack.ws_base, stack.url, conversation_id, cookies(carol if i % 2 else bob)
        )
        try:
            sock.connect(after=None if i % 4 else 0, timeout=20)  # every 4th replays all
        except Exception as exc:
            errors.append(f"cycle {i}: {type(exc).__name__}: {exc}")
        finally:
            sock.close()

    reader = ChatSocket(stack.ws_base, stack.url, conversation_id, cookies(alice)).connect()

    def read() -> None:
        while not stop.is_set():
            keep_reading(reader, 0.5)

    background = [threading.Thread(target=chatter, args=(u,), daemon=True) for u in (bob, carol)]
    background.append(threading.Thread(target=read, daemon=True))
    background.append(threading.Thread(target=browse, daemon=True))
    for thread in background:
        thread.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CHURN_THREADS) as pool:
            list(pool.map(cycle, range(cycles)))
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for thread in background:
            thread.join(timeout=10)
        sampler.stopping.set()
        sampler.join(timeout=10)

    print(
        f"\n{cycles} websocket cycles in {elapsed:.1f}s ({cycles / elapsed:.0f}/s); "
        f"{len(sent)} chat messages; peak app connections {max(sampler.samples)} "
        f"(limit {limit}, {len(sampler.samples)} samples)"
    )
    assert not errors, errors[:5]
    assert len(sampler.samples) > 50
    assert max(sampler.samples) > 0  # the probe sees the app at all
    assert max(sampler.samples) <= limit
    # The chat kept flowing during the churn: the reader got every message, once, in order.
    reader.wait_seq(len(sent), timeout=20)
    assert reader.seqs == list(range(1, len(sent) + 1))
    reader.close()
