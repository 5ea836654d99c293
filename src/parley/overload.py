"""Past capacity, HTTP degrades to 503 with Retry-After, never to a 500 or a long queue.

A request either runs soon or is refused at once: a queue that grows past what a process can
serve only makes every answer late (figures: loadtest/RESULTS.md; tests/stack/
test_overload_http.py holds every 503 to 2 s). Three bounds, each answered with 503 and Retry-After:

- `AdmissionGate` (`HTTPAdmission`, in front of Django's ASGI handler): at most
  WEB_REQUEST_SLOTS requests per process run Django (a thread each) at once; the rest wait
  on the event loop, at most WEB_QUEUE_SECONDS, then are refused from the loop without a
  thread (reason `queue_timeout`).
- the database pool: no connection within DB_POOL_TIMEOUT (`pool_timeout`).
- password hashing (parley.auth): no hashing slot within LOGIN_HASH_WAIT_SECONDS of the
  request's arrival (`hashing_busy`).

The last two raise exceptions from the view; `parley.middleware.OverloadMiddleware` answers
them. Each refusal is counted (`parley_http_refusals_total{reason}`) and logged as one
warning line, without a traceback.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.http import HttpResponse
from psycopg_pool import PoolTimeout

from parley import metrics
from parley.logging import request_id_var

logger = logging.getLogger(__name__)

# When the ASGI handler received the request (time.monotonic()); None outside it (WSGI, the
# test client): then waits count from when they start.
arrived_at: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "arrived_at", default=None
)


def waited() -> float:
    """Seconds since this request arrived (0 when unknown)."""
    arrived = arrived_at.get()
    return 0.0 if arrived is None else time.monotonic() - arrived


# Seconds a refused client is asked to wait: a pool frees up within a request's duration,
# a hashing slot within a hash (~0.3 s of PBKDF2).
RETRY_AFTER_SECONDS = 2

BODY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Busy · Parley</title></head>
<body><h1>Parley is busy</h1><p>Too many requests at once. Try again in a few seconds.</p>
</body></html>
"""


class Overloaded(Exception):
    """Refused before doing the work: this process has no capacity for it right now."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def refusal_reason(exc: BaseException | None) -> str | None:
    """The metric label for an exception that means "over capacity", or None.

    Django wraps the pool's exceptions (psycopg OperationalErrors) in its own
    `django.db.OperationalError`, with the original as `__cause__`: the chain is followed.
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, Overloaded):
            return exc.reason
        if isinstance(exc, PoolTimeout):
            return "pool_timeout"  # no connection within DB_POOL_TIMEOUT
        if isinstance(exc, psycopg.OperationalError):
            # The database went away under the request (restarted, failed over): 503 with
            # Retry-After, which a browser and a load balancer retry, not a 500.
            return "database_unavailable"
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def note_refusal(reason: str, method: str | None, path: str) -> None:
    metrics.HTTP_REFUSALS.labels(reason=reason).inc()
    logger.warning(
        "refused with 503: over capacity",
        extra={"reason": reason, "method": method, "path": path[:200]},
    )


def busy_response() -> HttpResponse:
    """503 with Retry-After; touches no database (no template, no user)."""
    response = HttpResponse(BODY, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    # The refusal's own warning line is the record: Django's django.request logger would
    # add an ERROR line for every 5xx (its log_response skips a response marked logged).
    response._has_been_logged = True
    return response


class AdmissionGate:
    """At most `limit` holders at once; others wait in arrival order, each up to its own
    bound. Lives on one event loop; enter/leave are called from it only."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an admission gate needs at least one slot")
        self.limit = limit
        self.active = 0
        self.waiters: deque[asyncio.Future] = deque()
        self._waiting = 0  # waiters not yet served nor given up (a storm asks per refusal)

    async def enter(self, wait: float, first: bool = False) -> bool:
        """True once a slot is this caller's (leave() it later); False after `wait`
        seconds without one. `first`: served before every waiter already in line."""
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()  # timed out earlier
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return True
        if wait <= 0:
            return False
        slot = asyncio.get_running_loop().create_future()
        if first:
            self.waiters.appendleft(slot)
        else:
            self.waiters.append(slot)
        self._waiting += 1
        try:
            async with asyncio.timeout(wait):
                await slot
        except TimeoutError:
            pass
        except BaseException:
            # Cancelled (the server is stopping): a slot handed over meanwhile is passed on.
            if slot.done() and not slot.cancelled():
                self.leave()
            raise
        finally:
            if not slot.done():
                slot.cancel()  # leave() skips it
            if slot.cancelled():
                self._waiting -= 1  # gave up (timed out or cancelled); leave() counts the rest
        return not slot.cancelled()  # handed a slot, even as the timeout fired

    def reclaim(self) -> None:
        """Takes a lent slot back (see `slot_lent`) without waiting: briefly past the limit,
        by at most the lent slots, rather than stall a request half done."""
        self.active += 1

    def leave(self) -> None:
        """Hands the slot to the longest waiter still waiting, or frees it."""
        while self.waiters:
            slot = self.waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                self._waiting -= 1
                return
        self.active -= 1

    @property
    def waiting(self) -> int:
        return self._waiting


# The gate that admitted this request, and its loop (set by HTTPAdmission; None elsewhere).
admitted_by: contextvars.ContextVar[tuple[AdmissionGate, asyncio.AbstractEventLoop] | None] = (
    contextvars.ContextVar("admitted_by", default=None)
)


@contextmanager
def slot_lent() -> Iterator[None]:
    """Inside, this request's admission slot serves another request: for a request thread
    that waits without the GIL (for a password hashing slot, or hashing, which hashlib does
    without it), so a storm of logins cannot hold every slot while pages wait. Called on
    the request's thread; the gate is told on its loop."""
    admitted = admitted_by.get()
    if admitted is None:
        yield
        return
    gate, loop = admitted
    loop.call_soon_threadsafe(gate.leave)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(gate.reclaim)


class HTTPAdmission:
    """The AdmissionGate in front of Django, for the ASGI handler of either runtime
    (parley_runtime.http): `admit()` when a request arrives, `leave()` once its thread is
    free. Health checks are never queued: a liveness probe refused under load would get the
    process restarted."""

    ungated_paths = frozenset({"/healthz", "/readyz"})

    def __init__(self, slots: int, queue_seconds: float) -> None:
        self.gate = AdmissionGate(slots)
        self.queue_seconds = queue_seconds

    def gated(self, scope: dict) -> bool:
        return scope["path"] not in self.ungated_paths

    async def admit(self, scope: dict, send) -> bool:
        """True: run the request (leave() later if gated). False: it was refused here, 503
        from the loop: no thread, no middleware, no database."""
        arrived_at.set(time.monotonic())
        if not self.gated(scope):
            return True
        if not await self.gate.enter(self.queue_seconds):
            note_refusal("queue_timeout", scope.get("method"), scope["path"])
            await self.refuse(send)
            return False
        admitted_by.set((self.gate, asyncio.get_running_loop()))
        return True

    def leave(self, scope: dict) -> None:
        if self.gated(scope):
            self.gate.leave()

    @staticmethod
    async def refuse(send) -> None:
        body = BODY.encode()
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-request-id", request_id_var.get().encode("latin-1")),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
