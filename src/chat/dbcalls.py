"""Database calls from websocket consumers: bounded, and refused at once while the database is
known to be down.

Channels runs every consumer's database call on one thread per process
(`database_sync_to_async`). With Postgres down each call waited out the pool's timeout (10 s
then) in that queue, so the 50th sender heard "could not be saved" minutes later, and the queue
grew with every frame. Here a process has at most CHAT_DB_MAX_PENDING calls waiting; past
that a call is refused in microseconds. A call that fails to reach the database (connection
refused, pool timeout) opens the circuit for CHAT_DB_RETRY_SECONDS: calls meanwhile are
refused without touching the thread, then the next one tries again. Refusals raise
`DatabaseUnavailable`, a `DatabaseError`, so every caller's existing error path applies (the
sender gets its error fragment with the client_id; a connect gets 1013).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, OperationalError

from parley import metrics

T = TypeVar("T")


class DatabaseUnavailable(DatabaseError):
    """Refused without asking the database: it is down, or too many calls are waiting."""


class DatabaseBusy(DatabaseUnavailable):
    """Refused without asking the database: too many calls are waiting in this process."""


class DatabaseGate:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pending = 0
        self.down = False  # a call could not reach the database, and none has since
        self.retry_at = 0.0
        self.probing = False  # the one call let through to see whether it is back
        self.waiting: dict[int, float] = {}  # calls not started on the thread: submitted at
        self.tokens = itertools.count()
        self.slot_waiters: list[asyncio.Future] = []  # calls waiting for a slot (bounded)

    def queue_delay(self) -> float:
        """How long the oldest call not yet started on the database thread has waited (0
        when none waits): how long a store asked for now would wait, at least."""
        if not self.waiting:
            return 0.0
        return time.monotonic() - min(tuple(self.waiting.values()), default=time.monotonic())

    def _timed(self, fn: Callable[..., T], token: int) -> Callable[..., T]:
        def run(*args: Any, **kwargs: Any) -> T:
            self.waiting.pop(token, None)
            return fn(*args, **kwargs)

        return run

    async def _slot(self, slot_wait: float) -> None:
        """Returns once fewer than CHAT_DB_MAX_PENDING calls are pending; waits for that at
        most `slot_wait` seconds, in a bounded line (CHAT_DB_MAX_SLOT_WAITERS), else raises
        DatabaseBusy."""
        if self.pending < settings.CHAT_DB_MAX_PENDING:
            return
        if slot_wait <= 0 or len(self.slot_waiters) >= settings.CHAT_DB_MAX_SLOT_WAITERS:
            metrics.DB_CALLS_REFUSED.labels(reason="busy").inc()
            raise DatabaseBusy("too many database calls waiting in this process")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + slot_wait
        while self.pending >= settings.CHAT_DB_MAX_PENDING:
            waiter = loop.create_future()
            self.slot_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                metrics.DB_CALLS_REFUSED.labels(reason="busy").inc()
                raise DatabaseBusy("no database slot in time in this process") from None
            finally:
                if waiter in self.slot_waiters:
                    self.slot_waiters.remove(waiter)

    def _wake_slot_waiter(self) -> None:
        while self.slot_waiters:
            waiter = self.slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def call(
        self, fn: Callable[..., T], *args: Any, slot_wait: float = 0.0, **kwargs: Any
    ) -> T:
        """`slot_wait`: how long to wait for a slot when CHAT_DB_MAX_PENDING calls are
        pending (0: refused at once, as a send is: its page retries)."""
        probe = False
        if self.down and (self.probing or time.monotonic() < self.retry_at):
            metrics.DB_CALLS_REFUSED.labels(reason="down").inc()
            raise DatabaseUnavailable("the database is down; retrying shortly")
        await self._slot(slot_wait)
        if self.down:
            if self.probing or time.monotonic() < self.retry_at:
                metrics.DB_CALLS_REFUSED.labels(reason="down").inc()
                raise DatabaseUnavailable("the database is down; retrying shortly")
            probe = self.probing = True  # one call tries; the rest are refused meanwhile
        self.pending += 1
        token = next(self.tokens)
        self.waiting[token] = time.monotonic()
        try:
            result = await database_sync_to_async(self._timed(fn, token))(*args, **kwargs)
        except OperationalError:
            # Could not reach it (or the connection died): let it recover before asking again.
            self.down = True
            self.retry_at = time.monotonic() + settings.CHAT_DB_RETRY_SECONDS
            raise
        finally:
            self.pending -= 1
            self.waiting.pop(token, None)
            self._wake_slot_waiter()
            if probe:
                self.probing = False
        self.down = False
        return result


gate = DatabaseGate()


def db(fn: Callable[..., T], slot_wait: float = 0.0) -> Callable[..., Awaitable[T]]:
    """`await db(fn)(*args)`: fn on the database thread, through the gate. `slot_wait`: see
    DatabaseGate.call (handshakes wait a little in a storm; sends do not)."""

    def call(*args: Any, **kwargs: Any) -> Awaitable[T]:
        return gate.call(fn, *args, slot_wait=slot_wait, **kwargs)

    return call
