"""A process's use of the channel layer: sending to a group, and being in one.

Every group send goes through `group_send` (a layer failure is logged, counted and answered
False, never raised), and every membership is a `Subscription`: one channel of its own in
some groups, its messages handed to a callback in order, and after the layer fails (Redis
down, a subscription lost) a rejoin with capped, jittered backoff, then `on_recovered`.
Sockets hold no channel of their own: each process subscribes once per group it follows
(chat.hub, chat.users), so a socket costs no Redis subscription and no waiting receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

from channels.layers import get_channel_layer

from parley import metrics

try:  # channels-redis raises redis-py errors; the in-memory layer raises none of these.
    from redis.exceptions import RedisError

    LAYER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
except ImportError:  # pragma: no cover
    LAYER_ERRORS = (OSError, asyncio.TimeoutError)

logger = logging.getLogger(__name__)

# This process's name in what it publishes and counts (events' publisher, socket counts).
PROCESS = secrets.token_hex(8)
BACKOFF_FIRST_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 5.0
# A layer call (a send, a join) that has not answered in this long has failed: Redis behind a
# dead address drops packets instead of refusing, and a call would otherwise wait forever.
CALL_SECONDS = 2.0
# A membership is joined again this often: the core layer expires group entries
# (group_expiry), the pub/sub layer keeps them as long as its connection.
REJOIN_SECONDS = 600.0


def backoff_delays() -> object:
    """Seconds to wait before each retry: doubling from BACKOFF_FIRST_SECONDS up to
    BACKOFF_CAP_SECONDS, each jittered to 50-150% so retries of many processes spread out."""
    delay = BACKOFF_FIRST_SECONDS
    while True:
        yield delay * (0.5 + random.random())
        delay = min(delay * 2, BACKOFF_CAP_SECONDS)


async def group_send(group: str, event: dict) -> bool:
    """`event` to every channel in `group`; False (logged and counted) if the layer failed."""
    try:
        async with asyncio.timeout(CALL_SECONDS):
            await get_channel_layer().group_send(group, event)
        return True
    except LAYER_ERRORS as exc:
        metrics.BROADCAST_FAILURES.inc()
        logger.warning("group_send failed", extra={"group": group, "error": repr(exc)})
        return False


Handler = Callable[[dict], Awaitable[None]]


class Subscription:
    """This process in some groups, on one channel of its own, for as long as `close()` is
    not called: every message of every group goes to `on_message`, in order. `ready` is done
    once the first join was tried (joined or not: until it succeeds, it is retried with
    backoff, every group again). `joined`: the layer has the memberships and nothing failed
    since."""

    def __init__(
        self,
        groups: Iterable[str],
        on_message: Handler,
        on_recovered: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.groups = set(groups)
        self.on_message = on_message
        self.on_recovered = on_recovered
        self.layer = get_channel_layer()
        self.channel = ""
        self.joined = False
        self.joined_at = 0.0
        self.closed = False
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = asyncio.ensure_future(self._run())

    async def join(self) -> bool:
        """Joins every group (again); False, logged, if the layer failed (the receive loop
        retries)."""
        try:
            async with asyncio.timeout(CALL_SECONDS):
                if not self.channel:
                    self.channel = await self.layer.new_channel()
                for group in list(self.groups):
                    await self.layer.group_add(group, self.channel)
        except LAYER_ERRORS as exc:
            logger.warning("group join failed; will retry", extra={"error": repr(exc)})
            self.joined = False
            return False
        self.joined = True
        self.joined_at = time.monotonic()
        return True

    async def add(self, group: str) -> None:
        """Joins one more group; if the layer fails, the receive loop's rejoin adds it."""
        self.groups.add(group)
        if not (self.joined and self.channel):
            return
        try:
            async with asyncio.timeout(CALL_SECONDS):
                await self.layer.group_add(group, self.channel)
        except LAYER_ERRORS as exc:
            logger.warning("group join failed; will retry", extra={"error": repr(exc)})
            self.joined = False

    async def discard(self, group: str) -> None:
        """Leaves one group (an entry the layer keeps lapses with its group_expiry)."""
        self.groups.discard(group)
        if self.channel:
            with contextlib.suppress(*LAYER_ERRORS):
                async with asyncio.timeout(CALL_SECONDS):
                    await self.layer.group_discard(group, self.channel)

    def stale(self) -> bool:
        """Joined long enough ago to join again (the process heartbeat asks)."""
        return self.joined and time.monotonic() - self.joined_at > REJOIN_SECONDS

    async def _run(self) -> None:
        try:
            await self.join()
        finally:
            if not self.ready.done():
                self.ready.set_result(None)
        while not self.closed:
            if not self.joined:
                await self._rejoin()
                continue
            try:
                message = await self.layer.receive(self.channel)
            except LAYER_ERRORS as exc:
                self.joined = False
                logger.warning("channel layer lost", extra={"error": repr(exc)})
                continue
            try:
                await self.on_message(message)
            except Exception:  # one bad message must not end the membership
                logger.exception("could not handle a layer message")

    async def _rejoin(self) -> None:
        for delay in backoff_delays():
            await asyncio.sleep(delay)
            if self.closed or await self.join():
                break
        if self.closed:
            return
        logger.info("channel layer recovered", extra={"groups": len(self.groups)})
        if self.on_recovered is not None:
            task = asyncio.ensure_future(self.on_recovered())
            task.add_done_callback(_log_failure)

    def cancel(self) -> None:
        """Stops receiving at once (the server is stopping): the membership goes with the
        process's layer connection, or lapses with the core layer's group_expiry."""
        self.closed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def close(self) -> None:
        """Stops receiving and leaves its groups."""
        self.closed = True
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.channel:
            with contextlib.suppress(*LAYER_ERRORS):
                async with asyncio.timeout(CALL_SECONDS):
                    for group in list(self.groups):
                        await self.layer.group_discard(group, self.channel)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("recovery after a layer outage failed", exc_info=task.exception())
