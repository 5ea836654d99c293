"""parley.dbcalls against the real Postgres: a bound on waiting calls, refusals at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.db import connection

from parley.dbcalls import DatabaseUnavailable, gate

pytestmark = pytest.mark.django_db(transaction=True)


def slow_query(seconds: float) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s), 1", [seconds])
        return cursor.fetchone()[1]


@pytest.fixture(autouse=True)
def _fresh_gate():
    gate.reset()
    yield
    gate.reset()


async def test_calls_past_the_bound_are_refused_at_once(settings):
    settings.CHAT_DB_MAX_PENDING = 2
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(gate.call(slow_query, 0.3) for _ in range(6)), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, DatabaseUnavailable)]
    assert outcomes.count(1) == 2 and len(refused) == 4
    assert gate.pending == 0
    assert time.monotonic() - started < 0.3 * 6  # nobody queued behind the bound


async def test_below_the_bound_every_call_runs():
    assert await asyncio.gather(*(gate.call(slow_query, 0.01) for _ in range(5))) == [1] * 5


async def test_handshakes_wait_for_a_slot_in_a_bounded_line_then_are_refused(settings):
    """A reconnect storm: calls with a slot wait queue for the bound instead of bouncing,
    in a line of at most CHAT_DB_MAX_SLOT_WAITERS, each for at most its wait."""
    settings.CHAT_DB_MAX_PENDING = 2
    settings.CHAT_DB_MAX_SLOT_WAITERS = 3
    outcomes = await asyncio.gather(
        *(gate.call(slow_query, 0.2, slot_wait=5.0) for _ in range(5)),  # 2 run, 3 wait
        gate.call(slow_query, 0.2, slot_wait=5.0),  # the line is full: refused
        return_exceptions=True,
    )
    assert outcomes[:5] == [1] * 5
    assert isinstance(outcomes[5], DatabaseUnavailable)
    # A wait that runs out is refused too, and leaves no one behind in the line.
    outcomes = await asyncio.gather(
        *(gate.call(slow_query, 1.0) for _ in range(2)),
        gate.call(slow_query, 0.1, slot_wait=0.2),
        return_exceptions=True,
    )
    assert outcomes[:2] == [1, 1] and isinstance(outcomes[2], DatabaseUnavailable)
    assert gate.pending == 0 and not gate.slot_waiters


async def test_a_handshakes_second_read_goes_first_even_when_the_line_is_full(settings):
    """Its first read (session, user) is done: turning it away would waste that work, and a
    storm then refuses half-done handshakes by the thousand."""
    settings.CHAT_DB_MAX_PENDING = 1
    settings.CHAT_DB_MAX_SLOT_WAITERS = 1
    done: list[str] = []

    async def call(name: str, seconds: float, **kwargs) -> None:
        await gate.call(slow_query, seconds, **kwargs)
        done.append(name)

    running = asyncio.create_task(call("running", 0.3))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(call("queued", 0.01, slot_wait=5.0))
    await asyncio.sleep(0.05)
    with pytest.raises(DatabaseUnavailable):  # the line is full
        await gate.call(slow_query, 0.01, slot_wait=5.0)
    second = asyncio.create_task(call("second read", 0.01, slot_wait=5.0, first=True))
    await asyncio.gather(running, queued, second)
    assert done == ["running", "second read", "queued"]


async def test_handshake_reads_run_beside_a_store_the_database_thread_is_busy_with(settings):
    """A reconnect storm's reads no longer wait behind stores on the one database thread,
    nor make a send look late (queue_delay counts that thread's line only)."""
    settings.CHAT_DB_READ_THREADS = 2
    store = asyncio.create_task(gate.call(slow_query, 1.0))
    await asyncio.sleep(0.05)
    behind = asyncio.create_task(gate.call(slow_query, 0.0))  # waits for the thread
    reads = asyncio.gather(*(gate.call(slow_query, 0.0, read=True) for _ in range(4)))
    finished, _ = await asyncio.wait({store, reads}, return_when=asyncio.FIRST_COMPLETED)
    assert finished == {reads} and reads.result() == [1] * 4
    assert not store.done() and not behind.done()
    assert await store == 1 and await behind == 1


async def test_a_send_is_admitted_while_handshakes_fill_every_read_slot(settings):
    """A reconnect storm's handshakes wait in a line of their own: a live conversation's send
    is not refused because other people's sockets are coming back."""
    settings.CHAT_DB_READ_THREADS = 2
    settings.CHAT_DB_MAX_PENDING = 2
    settings.CHAT_DB_MAX_SLOT_WAITERS = 2
    storm = [
        asyncio.create_task(gate.call(slow_query, 0.3, read=True, slot_wait=5.0))
        for _ in range(4)  # 2 hold the read slots, 2 wait: that line is full
    ]
    await asyncio.sleep(0.05)
    with pytest.raises(DatabaseUnavailable):
        await gate.call(slow_query, 0.0, read=True, slot_wait=5.0)
    assert await gate.call(slow_query, 0.0) == 1  # the send: at once, no slot wait
    assert await asyncio.gather(*storm) == [1] * 4
