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
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections

from parley.perloop import per_loop


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
        _every.add(self)

    def queue_delay(self) -> float:
        """How long the longest waiter has waited for a connection (0: nobody waits)."""
        while self.waiters and self.waiters[0][0].done():
            self.waiters.popleft()
        return time.monotonic() - self.waiters[0][1] if self.waiters else 0.0

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


def close_all_idle() -> None:
    """Every event loop's idle store connections, closed (tests, before their database is
    dropped: a test's loop is gone by then, its connections are not)."""
    for instance in list(_every):
        instance.close_idle()
