"""Graceful drain for websocket processes.

On SIGTERM the daphne runner (config.serve_ws) calls `begin_drain()`: /readyz answers 503 at
once, new websocket handshakes are refused, and every open socket is closed with 1012
(Service Restart), a code the HTMX extension reconnects after; the client then lands on
another daphne and replays what it missed from its last sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

CLOSE_SERVICE_RESTART = 1012


class Drainable(Protocol):
    async def drain(self, code: int) -> None: ...


_state = {"draining": False, "since": 0.0}
_sockets: weakref.WeakSet[Any] = weakref.WeakSet()
_all_closed: asyncio.Event | None = None


def is_draining() -> bool:
    return _state["draining"]


def register(consumer: Drainable) -> None:
    _sockets.add(consumer)


def unregister(consumer: Drainable) -> None:
    _sockets.discard(consumer)
    if not _sockets and _all_closed is not None:
        _all_closed.set()


def open_socket_count() -> int:
    return len(_sockets)


def mark_draining() -> None:
    """/readyz answers 503 and new handshakes are refused from now on (idempotent)."""
    if not _state["draining"]:
        _state["draining"] = True
        _state["since"] = time.monotonic()


async def begin_drain(grace: float) -> int:
    """Close every open socket with 1012; returns how many were still open after `grace`."""
    global _all_closed
    mark_draining()
    _all_closed = asyncio.Event()
    consumers = list(_sockets)
    logger.info("drain started", extra={"open_sockets": len(consumers)})
    await asyncio.gather(
        *(c.drain(CLOSE_SERVICE_RESTART) for c in consumers), return_exceptions=True
    )
    if _sockets:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_all_closed.wait(), grace)
    left = len(_sockets)
    logger.info("drain finished", extra={"still_open": left})
    return left


class DrainMiddleware:
    """Refuses new websocket handshakes while the process drains. Otherwise it hands over to
    the application rather than awaiting it (see parley_runtime.routing)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, scope: dict, receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] == "websocket" and is_draining():
            return self._refuse(send)
        return self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Any) -> None:
        from parley import metrics

        metrics.WEBSOCKET_REFUSALS.labels(reason="draining").inc()
        # Not accepted: the browser sees 1006 and the HTMX extension retries elsewhere.
        await send({"type": "websocket.close", "code": 1013})
