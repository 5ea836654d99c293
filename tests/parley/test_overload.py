"""parley.overload.AdmissionGate: a slot per holder, waiters served in order, each waiting at
most its own bound, and no slot lost to a timeout or a cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from parley.overload import AdmissionGate


async def test_holders_up_to_the_limit_enter_at_once_and_the_next_times_out():
    gate = AdmissionGate(2)
    assert await gate.enter(0) and await gate.enter(0)
    assert not await gate.enter(0)
    assert not await gate.enter(0.05)
    assert gate.active == 2 and gate.waiting == 0


async def test_a_freed_slot_goes_to_the_longest_waiter():
    gate = AdmissionGate(1)
    assert await gate.enter(0)
    first = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    second = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    gate.leave()
    assert await first is True
    assert not second.done()
    gate.leave()
    assert await second is True
    gate.leave()
    assert gate.active == 0


async def test_a_waiter_that_timed_out_is_skipped_and_a_new_one_enters_at_once():
    gate = AdmissionGate(1)
    assert await gate.enter(0)
    assert not await gate.enter(0.01)
    gate.leave()
    assert gate.active == 0
    assert await gate.enter(0)


async def test_a_slot_handed_over_as_the_wait_runs_out_is_kept_not_lost():
    gate = AdmissionGate(1)
    assert await gate.enter(0)
    waiter = asyncio.create_task(gate.enter(0.01))
    await asyncio.sleep(0)
    time.sleep(0.05)  # the loop is busy: the waiter's bound passes before it runs again
    gate.leave()  # the slot is handed to it meanwhile
    assert await waiter is True
    assert gate.active == 1  # not freed twice, not leaked
    gate.leave()
    assert gate.active == 0


async def test_a_cancelled_waiter_passes_a_slot_it_was_handed_on():
    gate = AdmissionGate(1)
    assert await gate.enter(0)
    cancelled = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    nxt = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    gate.leave()  # to `cancelled`...
    cancelled.cancel()  # ...which is stopped before it runs: the slot goes on to `nxt`
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await nxt is True
    assert gate.active == 1


async def test_a_lent_slot_is_taken_back_without_waiting():
    gate = AdmissionGate(1)
    assert await gate.enter(0)
    gate.leave()  # lent out
    assert await gate.enter(0)  # another request uses it
    gate.reclaim()  # the lender goes on, briefly past the limit
    assert gate.active == 2
    gate.leave()
    gate.leave()
    assert gate.active == 0


async def test_a_first_waiter_is_served_before_the_line_and_the_count_stays_exact():
    gate = AdmissionGate(1)
    assert await gate.enter(0)
    queued = asyncio.create_task(gate.enter(5))
    timing_out = asyncio.create_task(gate.enter(0.05))
    cancelled = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    ahead = asyncio.create_task(gate.enter(5, first=True))
    await asyncio.sleep(0)
    assert gate.waiting == 4
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert await timing_out is False
    assert gate.waiting == 2
    gate.leave()
    assert await ahead is True and not queued.done()
    assert gate.waiting == 1
    gate.leave()
    assert await queued is True
    assert gate.waiting == 0 and gate.active == 1
