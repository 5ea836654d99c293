"""Database calls from websocket consumers: bounded, and refused at once while the database is
known to be down.

Channels runs every consumer's database call on one thread per process
(`database_sync_to_async`). With Postgres down each call waited out the pool's timeout (10 s)
in that queue, so the 50th sender heard "could not be saved" minutes later, and the queue
grew with every frame. Here a process has at most CHAT_DB_MAX_PENDING calls waiting; past
that a call is refused in microseconds. A call that fails to reach the database (connection
refused, pool timeout) opens the circuit for CHAT_DB_RETRY_SECONDS: calls meanwhile are
refused without touching the thread, then the next one tries again. Refusals raise
`DatabaseUnavailable`, a `DatabaseError`, so every caller's existing error path applies (the
sender gets its error fragment with the client_id; a connect gets 1013).
"""

from __future__ import annotations

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


class DatabaseGate:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pending = 0
        self.down = False  # a call could not reach the database, and none has since
        self.retry_at = 0.0
        self.probing = False  # the one call let through to see whether it is back

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        probe = False
        if self.down:
            if self.probing or time.monotonic() < self.retry_at:
                metrics.DB_CALLS_REFUSED.labels(reason="down").inc()
                raise DatabaseUnavailable("the database is down; retrying shortly")
            probe = self.probing = True  # one call tries; the rest are refused meanwhile
        if self.pending >= settings.CHAT_DB_MAX_PENDING:
            metrics.DB_CALLS_REFUSED.labels(reason="busy").inc()
            raise DatabaseUnavailable("too many database calls waiting in this process")
        self.pending += 1
        try:
            result = await database_sync_to_async(fn)(*args, **kwargs)
        except OperationalError:
            # Could not reach it (or the connection died): let it recover before asking again.
            self.down = True
            self.retry_at = time.monotonic() + settings.CHAT_DB_RETRY_SECONDS
            raise
        finally:
            self.pending -= 1
            if probe:
                self.probing = False
        self.down = False
        return result


gate = DatabaseGate()


def db(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`await db(fn)(*args)`: fn on the database thread, through the gate."""

    def call(*args: Any, **kwargs: Any) -> Awaitable[T]:
        return gate.call(fn, *args, **kwargs)

    return call
