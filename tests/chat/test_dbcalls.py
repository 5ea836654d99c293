"""chat.dbcalls against the real Postgres: a bound on waiting calls, refusals at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.db import connection

from chat.dbcalls import DatabaseUnavailable, gate

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
