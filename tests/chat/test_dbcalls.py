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
