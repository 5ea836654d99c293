"""A consumer's ASGI entry and dispatch loop, tuned or stock.

Tuned: `as_asgi_app()` returns the consumer's coroutine instead of awaiting it in one more
(Channels' as_asgi wraps it in a coroutine of its own, alive for the socket's whole life),
and `dispatch_loop()` awaits the client's next frame directly (Channels'
await_many_dispatch runs each source in a task and waits on them with asyncio.wait: a task,
two more coroutines, a set and a future kept by every idle socket). A socket reads one
source: the events it must hear reach it through its process's hubs, not a layer channel.
Stock: Channels' own as_asgi behaviour and channels.utils.await_many_dispatch.

Relies on (tests/parley_runtime/test_canary_channels.py): await_many_dispatch's signature
and that it ends on StopConsumer like this loop does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.exceptions import StopConsumer
from channels.utils import await_many_dispatch

Receive = Callable[[], Awaitable[dict]]
Dispatch = Callable[[dict], Awaitable[None]]


def as_asgi_app(mode: str, cls: type, initkwargs: dict[str, Any]) -> Callable:
    """The ASGI application of a consumer class, as Channels' `as_asgi()` makes it."""
    if mode == "tuned":

        def app(scope, receive, send):
            return cls(**initkwargs)(scope, receive, send)

    else:

        async def app(scope, receive, send):
            return await cls(**initkwargs)(scope, receive, send)

    app.consumer_class = cls
    app.consumer_initkwargs = initkwargs
    functools.update_wrapper(app, cls, updated=())
    return app


def dispatch_loop(
    mode: str,
    receive: Receive,
    dispatch: Dispatch,
    finish: Callable[[], None],
) -> Coroutine[Any, Any, None]:
    """The consumer's whole life as one coroutine (a consumer's __call__ returns it):
    dispatch whatever `receive` returns, in order, until dispatch raises StopConsumer (the
    end) or anything else (raised); finish() is called on the way out."""
    loop = _tuned_loop if mode == "tuned" else _stock_loop
    return loop(receive, dispatch, finish)


async def _stock_loop(receive, dispatch, finish) -> None:
    try:
        with contextlib.suppress(StopConsumer):
            await await_many_dispatch([receive], dispatch)
    finally:
        finish()


async def _tuned_loop(receive, dispatch, finish) -> None:
    try:
        while True:
            await dispatch(await receive())
    except StopConsumer:
        pass
    finally:
        finish()
