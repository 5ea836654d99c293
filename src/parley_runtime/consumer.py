"""A consumer's ASGI entry and dispatch loop, tuned or stock.

Tuned: `as_asgi_app()` returns the consumer's coroutine instead of awaiting it in one more
(Channels' as_asgi wraps it in a coroutine of its own, alive for the socket's whole life),
and `dispatch_loop()` waits for the client's next frame or the layer's next message through
one future (Channels' await_many_dispatch uses an asyncio.wait per wake-up: two more
coroutines, a set, a closure and a future kept by every idle socket).
Stock: Channels' own as_asgi behaviour and channels.utils.await_many_dispatch.

Relies on (tests/parley_runtime/test_canary_channels.py): await_many_dispatch's signature
and that it ends on StopConsumer like this loop does.
"""

from __future__ import annotations

import asyncio
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
    sources: tuple[Receive, Receive],
    dispatch: Dispatch,
    start: Callable[[], Awaitable[None]],
    finish: Callable[[], None],
) -> Coroutine[Any, Any, None]:
    """The consumer's whole life as one coroutine (a consumer's __call__ returns it): await
    start(), then dispatch whatever either source returns, in order per source, until
    dispatch raises StopConsumer (the end) or anything else (raised); the sources' pending
    reads are cancelled and finish() is called on the way out."""
    loop = _tuned_loop if mode == "tuned" else _stock_loop
    return loop(sources, dispatch, start, finish)


async def _stock_loop(sources, dispatch, start, finish) -> None:
    try:
        await start()
        with contextlib.suppress(StopConsumer):
            await await_many_dispatch(list(sources), dispatch)
    finally:
        finish()


async def _tuned_loop(sources, dispatch, start, finish) -> None:
    tasks: list[asyncio.Future] = []
    try:
        await start()
        tasks = [asyncio.ensure_future(source()) for source in sources]
        while True:
            if not (tasks[0].done() or tasks[1].done()):
                woken = asyncio.get_running_loop().create_future()
                wake = functools.partial(_wake, woken)
                for task in tasks:
                    task.add_done_callback(wake)
                try:
                    await woken
                finally:
                    for task in tasks:
                        task.remove_done_callback(wake)
            for i in (0, 1):
                if tasks[i].done():
                    await dispatch(tasks[i].result())
                    tasks[i] = asyncio.ensure_future(sources[i]())
    except StopConsumer:
        pass
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finish()


def _wake(future: asyncio.Future, _done: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
