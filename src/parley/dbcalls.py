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

import itertools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels.db import DatabaseSyncToAsync, database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, OperationalError, connection

from parley import loopdb, metrics
from parley.overload import AdmissionGate

T = TypeVar("T")


class DatabaseUnavailable(DatabaseError):
    """Refused without asking the database: it is down, or too many calls are waiting."""


class DatabaseBusy(DatabaseUnavailable):
    """Refused without asking the database: too many calls are waiting in this process."""


def _returning_connection(fn: Callable[..., T]) -> Callable[..., T]:
    """fn, then this thread's connection back to the pool: a reader thread holds none between
    calls, so the pool's other users (the store thread, /readyz) never wait on an idle one."""

    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return run


class DatabaseGate:
    def __init__(self) -> None:
        self.readers: ThreadPoolExecutor | None = None
        self.reset()

    def reset(self) -> None:
        # At most CHAT_DB_MAX_PENDING calls pending; a freed slot is handed to the longest
        # waiter, so a handshake in the line is not overtaken by calls arriving after it.
        # Reads on the reader threads have slots of their own: a reconnect storm's handshakes
        # fill those, never the ones a send needs.
        self.slots = AdmissionGate(settings.CHAT_DB_MAX_PENDING)
        self.read_slots = AdmissionGate(settings.CHAT_DB_MAX_PENDING)
        self.down = False  # a call could not reach the database, and none has since
        self.retry_at = 0.0
        self.probing = False  # the one call let through to see whether it is back
        self.waiting: dict[int, float] = {}  # calls not started on the thread: submitted at
        self.tokens = itertools.count()

    def _reader(self, fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
        """fn on one of the CHAT_DB_READ_THREADS handshake reader threads (each borrows its
        own pooled connection), or on the database thread when there are none."""
        if settings.CHAT_DB_READ_THREADS <= 0:
            return database_sync_to_async(fn)
        if self.readers is None:
            self.readers = ThreadPoolExecutor(
                settings.CHAT_DB_READ_THREADS, thread_name_prefix="db-read"
            )
        return DatabaseSyncToAsync(
            _returning_connection(fn), thread_sensitive=False, executor=self.readers
        )

    @property
    def pending(self) -> int:
        """Calls holding a slot: on a database thread or queued for it."""
        return self.slots.active + self.read_slots.active

    @property
    def slot_waiters(self) -> int:
        """Calls waiting for a slot (in a storm, handshakes)."""
        return self.slots.waiting + self.read_slots.waiting

    def _line(self, read: bool) -> AdmissionGate:
        return self.read_slots if read and settings.CHAT_DB_READ_THREADS > 0 else self.slots

    def queue_delay(self) -> float:
        """How long the oldest call not yet started on the database thread (or store not yet
        given a connection, parley.loopdb) has waited (0 when none waits): how long a store
        asked for now would wait, at least."""
        delay = loopdb.loop_connections().queue_delay() if loopdb.enabled() else 0.0
        if not self.waiting:
            return delay
        oldest = min(tuple(self.waiting.values()), default=time.monotonic())
        return max(delay, time.monotonic() - oldest)

    def _timed(self, fn: Callable[..., T], token: int) -> Callable[..., T]:
        def run(*args: Any, **kwargs: Any) -> T:
            self.waiting.pop(token, None)
            return fn(*args, **kwargs)

        return run

    async def _slot(self, slots: AdmissionGate, slot_wait: float, first: bool = False) -> None:
        """Returns holding one of `slots` (release it with slots.leave()); waits for one at
        most `slot_wait` seconds, in a bounded line (CHAT_DB_MAX_SLOT_WAITERS), else raises
        DatabaseBusy. `first`: a handshake's second read, at the head of the line and never
        turned away for its length (such reads are bounded by the handshakes in flight):
        refusing it would throw away the first read's work."""
        slots.limit = settings.CHAT_DB_MAX_PENDING  # read per call, as every setting
        if slot_wait > 0 and not first and slots.waiting >= settings.CHAT_DB_MAX_SLOT_WAITERS:
            slot_wait = 0.0  # the line is full: only a free slot will do
        if not await slots.enter(slot_wait, first=first):
            metrics.DB_CALLS_REFUSED.labels(reason="busy").inc()
            raise DatabaseBusy(
                "no database slot in time in this process"
                if slot_wait > 0
                else "too many database calls waiting in this process"
            )

    async def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        slot_wait: float = 0.0,
        read: bool = False,
        first: bool = False,
        on_loop: bool = False,
        **kwargs: Any,
    ) -> T:
        """`slot_wait`: how long to wait for a slot when CHAT_DB_MAX_PENDING calls are
        pending (0: refused at once, as a send is: its page retries). `read`: a handshake's
        read, run on the reader threads; it neither waits behind stores nor delays them
        (queue_delay counts the database thread's line only). `first`: see _slot.
        `on_loop`: fn is a coroutine function run on the event loop (parley.loopdb)."""
        probe = False
        if self.down and (self.probing or time.monotonic() < self.retry_at):
            metrics.DB_CALLS_REFUSED.labels(reason="down").inc()
            raise DatabaseUnavailable("the database is down; retrying shortly")
        slots = self._line(read)
        await self._slot(slots, slot_wait, first)
        if self.down:
            if self.probing or time.monotonic() < self.retry_at:
                slots.leave()
                metrics.DB_CALLS_REFUSED.labels(reason="down").inc()
                raise DatabaseUnavailable("the database is down; retrying shortly")
            probe = self.probing = True  # one call tries; the rest are refused meanwhile
        token = next(self.tokens)
        try:
            if on_loop:
                result = await fn(*args, **kwargs)
            elif read:
                result = await self._reader(fn)(*args, **kwargs)
            else:
                self.waiting[token] = time.monotonic()
                result = await database_sync_to_async(self._timed(fn, token))(*args, **kwargs)
        except loopdb.NoConnectionInTime:
            metrics.DB_CALLS_REFUSED.labels(reason="busy").inc()
            raise DatabaseBusy("no store connection in time in this process") from None
        except OperationalError:
            # Could not reach it (or the connection died): let it recover before asking again.
            self.down = True
            self.retry_at = time.monotonic() + settings.CHAT_DB_RETRY_SECONDS
            raise
        finally:
            slots.leave()
            self.waiting.pop(token, None)
            if probe:
                self.probing = False
        self.down = False
        return result


gate = DatabaseGate()


def store(
    on_thread: Callable[..., T], on_loop: Callable[..., Awaitable[T]]
) -> Callable[..., Awaitable[T]]:
    """A send's store through the gate: `on_loop` on the event loop's own connections
    (parley.loopdb) where there are any, else `on_thread` on the database thread."""

    def call(*args: Any, **kwargs: Any) -> Awaitable[T]:
        if loopdb.enabled():
            return gate.call(on_loop, *args, on_loop=True, **kwargs)
        return gate.call(on_thread, *args, **kwargs)

    return call


def db(
    fn: Callable[..., T], slot_wait: float = 0.0, read: bool = False, first: bool = False
) -> Callable[..., Awaitable[T]]:
    """`await db(fn)(*args)`: fn on the database thread, through the gate. `slot_wait`,
    `read`, `first`: see DatabaseGate.call (handshakes wait a little in a storm, and read on
    threads of their own; sends do neither)."""

    def call(*args: Any, **kwargs: Any) -> Awaitable[T]:
        return gate.call(fn, *args, slot_wait=slot_wait, read=read, first=first, **kwargs)

    return call
