"""Postgres connections the event loop uses itself, for the one write every send makes.

A send's store must not wait behind other database work on Channels' one database thread,
where every step waits for the GIL from a busy event loop (the figures: loadtest/RESULTS.md,
"stores on the loop"). Here the event loop sends the statement and reads the reply itself
(no thread, no GIL hand-over), on up to CHAT_DB_STORE_CONNECTIONS connections at once, so
stores to different conversations overlap (a send waits for a connection at most
DB_POOL_TIMEOUT, then is refused as busy; the page retries it).

Postgres only, and only where CHAT_DB_STORE_CONNECTIONS > 0: elsewhere (SQLite, the embedded
default) sends are stored on the database thread as every other call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import psycopg
from django.conf import settings
from django.db import connections

from parley.perloop import per_loop

Item = TypeVar("Item")
Result = TypeVar("Result")


class NoConnectionInTime(Exception):
    """Every store connection stayed busy for the whole wait."""


def enabled() -> bool:
    return (
        settings.CHAT_DB_STORE_CONNECTIONS > 0
        and settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    )


def _connect_params() -> dict[str, Any]:
    """Django's own connection parameters (database, credentials, OPTIONS, its adapters),
    without its cursor class, which is for synchronous connections."""
    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    return params


def _wait_seconds() -> float:
    pool = connections["default"].settings_dict.get("OPTIONS", {}).get("pool") or {}
    return float(pool.get("timeout", 1.0)) if isinstance(pool, dict) else 1.0


_every: weakref.WeakSet[LoopConnections] = weakref.WeakSet()


class LoopConnections:
    """At most CHAT_DB_STORE_CONNECTIONS autocommit connections, handed out in order of
    asking; opened when first needed, kept while they work."""

    def __init__(self) -> None:
        self.idle: list[psycopg.AsyncConnection] = []
        self.opened = 0  # open, opening or lent out
        # Who waits for a connection, and since when (a future's result: a connection, or
        # None to open one).
        self.waiters: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self.batches: list[Batches] = []  # their queues count in queue_delay
        _every.add(self)

    def queue_delay(self) -> float:
        """How long the longest waiter has waited for a connection, or in a batch's queue
        for its turn (0: nobody waits)."""
        while self.waiters and self.waiters[0][0].done():
            self.waiters.popleft()
        delay = time.monotonic() - self.waiters[0][1] if self.waiters else 0.0
        return max([delay, *(batches.queue_delay() for batches in self.batches)])

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        conn = await self._acquire()
        try:
            yield conn
        except psycopg.OperationalError:
            # The server dropped it; a restart drops every one: start afresh.
            self._discard(conn)
            for idle in self.idle[:]:
                self.idle.remove(idle)
                self._discard(idle)
            raise
        except BaseException:
            self._release(conn)
            raise
        else:
            self._release(conn)

    async def _acquire(self) -> psycopg.AsyncConnection:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
                self.opened -= 1
            if self.opened < settings.CHAT_DB_STORE_CONNECTIONS:
                return await self._open()
            conn = await self._wait()
            if conn is not None:
                return conn
            # A connection was dropped meanwhile: open its replacement (or wait again).

    async def _open(self) -> psycopg.AsyncConnection:
        self.opened += 1
        try:
            return await psycopg.AsyncConnection.connect(**_connect_params(), autocommit=True)
        except BaseException:
            self.opened -= 1
            self._wake_one(None)
            raise

    async def _wait(self) -> psycopg.AsyncConnection | None:
        future = asyncio.get_running_loop().create_future()
        self.waiters.append((future, time.monotonic()))
        try:
            async with asyncio.timeout(_wait_seconds()):
                return await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                handed = future.result()  # handed over just as we gave up: pass it on
                if handed is not None:
                    self._release(handed)
                else:
                    self._wake_one(None)
            future.cancel()
            if isinstance(exc, TimeoutError):
                raise NoConnectionInTime from None
            raise

    def _wake_one(self, conn: psycopg.AsyncConnection | None) -> bool:
        while self.waiters:
            future, _since = self.waiters.popleft()
            if not future.done():
                future.set_result(conn)
                return True
        return False

    def _release(self, conn: psycopg.AsyncConnection) -> None:
        idle = psycopg.pq.TransactionStatus.IDLE
        usable = not conn.closed and conn.info.transaction_status == idle
        if not usable:
            self._discard(conn)
        elif not self._wake_one(conn):
            self.idle.append(conn)

    def _discard(self, conn: psycopg.AsyncConnection) -> None:
        self.opened -= 1
        with contextlib.suppress(Exception):
            conn.pgconn.finish()  # synchronous: no round trip to a server that may be gone
        self._wake_one(None)

    def close_idle(self) -> None:
        for conn in self.idle:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()
        self.opened -= len(self.idle)
        self.idle.clear()


loop_connections = per_loop(lambda _loop: LoopConnections())


class Batches(Generic[Item, Result]):
    """Work for one key (a conversation) that arrives while that key's earlier work runs is
    done together, in one call of `run` (one statement, one commit), up to `limit()` items:
    under load a conversation's sends are stored in as few statements as they queued for,
    instead of each waiting for the row lock the one before holds. One task per busy key
    runs its calls in order; an item is never in two calls.

    `run(key, items)` returns a result or an exception for each item, in order; an exception
    it raises is every item's. A caller that stops waiting (its socket closed) before its item
    is taken leaves nothing behind; once taken, the item is done and its result dropped."""

    def __init__(
        self,
        run: Callable[[Any, list[Item]], Awaitable[list[Result | BaseException]]],
        limit: Callable[[], int],
    ) -> None:
        self.run = run
        self.limit = limit
        # key -> what waits for its turn: (item, the caller's future, since)
        self.queues: dict[Hashable, collections.deque[tuple[Item, asyncio.Future, float]]] = {}
        self.tasks: dict[Hashable, asyncio.Task] = {}
        loop_connections().batches.append(self)

    async def submit(self, key: Hashable, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self.queues.setdefault(key, collections.deque()).append((item, future, time.monotonic()))
        if key not in self.tasks:
            self.tasks[key] = asyncio.ensure_future(self._drain(key))
        return await future

    def queue_delay(self) -> float:
        """How long the oldest item not yet taken has waited (0: none waits)."""
        now, oldest = time.monotonic(), None
        for queue in self.queues.values():
            while queue and queue[0][1].done():
                queue.popleft()
            if queue and (oldest is None or queue[0][2] < oldest):
                oldest = queue[0][2]
        return 0.0 if oldest is None else now - oldest

    async def _drain(self, key: Hashable) -> None:
        queue = self.queues[key]
        try:
            while queue:
                taken: list[tuple[Item, asyncio.Future]] = []
                while queue and len(taken) < max(1, self.limit()):
                    item, future, _since = queue.popleft()
                    if not future.done():
                        taken.append((item, future))
                if taken:
                    await self._call(key, taken)
        except BaseException:
            for _item, future, _since in queue:
                future.cancel()
            queue.clear()
            raise
        finally:
            del self.tasks[key]
            if not queue:
                del self.queues[key]

    async def _call(self, key: Hashable, taken: list[tuple[Item, asyncio.Future]]) -> None:
        try:
            results = await self.run(key, [item for item, _future in taken])
        except Exception as exc:
            results = [exc] * len(taken)
        except BaseException:  # cancelled (the loop is closing): so are the callers
            for _item, future in taken:
                future.cancel()
            raise
        for (_item, future), result in zip(taken, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                # Each caller raises its own copy where it can: one exception object raised
                # in several tasks would share (and grow) one traceback.
                future.set_exception(_own_copy(result))
            else:
                future.set_result(result)


def _own_copy(exc: BaseException) -> BaseException:
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        return exc
    copy.__cause__ = exc.__cause__
    return copy


def close_all_idle() -> None:
    """Every event loop's idle store connections, closed (tests, before their database is
    dropped: a test's loop is gone by then, its connections are not)."""
    for instance in list(_every):
        instance.close_idle()
