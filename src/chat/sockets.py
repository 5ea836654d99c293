"""Websocket consumers that outlive outages, and the close codes Parley uses.

The HTMX ws extension reconnects only after 1006, 1011, 1012 and 1013, so refusals use 4xxx
codes (no retry) and anything the client should recover from uses 1012.
"""

from __future__ import annotations

import asyncio
import logging
import random

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

import parley_runtime
from chat.groups import LAYER_ERRORS
from chat.heartbeat import heartbeat
from parley import drain, metrics
from parley_runtime import consumer as consumer_runtime

logger = logging.getLogger(__name__)

CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_RATE_LIMITED = 4429


def note_refusal(code: int, reason: str, path: str | None) -> None:
    """Logs and counts a websocket refused by policy (parley_websocket_refusals_total)."""
    logger.info("websocket refused", extra={"code": code, "reason": reason, "path": path})
    metrics.WEBSOCKET_REFUSALS.labels(reason=reason).inc()


async def no_such_socket(scope: dict, receive, send) -> None:
    """Every websocket path no consumer serves: accepted, then closed with 4404, as a refusal
    (logged and counted, no traceback; without it the router raised, the server logged an
    error and the client got a 500). A bare ASGI app: no channel layer, no heartbeat."""
    if (await receive())["type"] != "websocket.connect":
        return
    note_refusal(CLOSE_NOT_FOUND, "not_found", scope.get("path"))
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_NOT_FOUND})


class ResilientConsumer(AsyncWebsocketConsumer):
    """A websocket consumer that outlives channel-layer outages.

    Channels ends a consumer when the layer's receive raises, which with Redis down means
    every socket is dropped and every client reconnects into the same outage. Here the
    socket stays open: the consumer stops listening, retries joining its groups with
    backoff, and on recovery dispatches `layer.recovered` so the subclass can heal.
    """

    groups_wanted: list[str]
    kind = "chat"

    @classmethod
    def as_asgi(cls, **initkwargs):
        """Channels' as_asgi; on the tuned runtime it hands over to the consumer's coroutine
        instead of awaiting it in one more (parley_runtime.consumer)."""
        return consumer_runtime.as_asgi_app(parley_runtime.mode(), cls, initkwargs)

    def __call__(self, scope, receive, send):  # noqa: D102 (ASGI entry)
        self.scope = scope
        self.base_send = send
        self.groups_wanted = []
        self.layer_ok = True
        self.accepted = False
        self.closed = False
        self.tasks: set[asyncio.Task | asyncio.TimerHandle] = set()  # cancelled at the end
        self.tracked = False
        self.rejoin_needed = False
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        return consumer_runtime.dispatch_loop(
            parley_runtime.mode(),
            (receive, self._layer_receive),
            self.dispatch,
            start=self._new_channel,
            finish=self._finish,
        )

    async def _new_channel(self) -> None:
        self.channel_name = await self.channel_layer.new_channel()

    def _finish(self) -> None:
        # Cancelled or crashed, background work dies with the socket.
        for task in list(self.tasks):
            task.cancel()
        self.untrack()

    def track(self) -> None:
        """The socket is open and live: count it, let a drain close it, and let the process
        heartbeat re-check its session."""
        self.tracked = True
        drain.register(self)
        metrics.WEBSOCKET_CONNECTS.labels(kind=self.kind).inc()
        metrics.WEBSOCKETS_OPEN.labels(kind=self.kind).inc()
        self.session_key: str = self.scope.get("session_key") or ""
        self.auth_hash: str = self.scope["user"].get_session_auth_hash()
        heartbeat().watch(self)

    def untrack(self) -> None:
        if self.tracked:
            self.tracked = False
            drain.unregister(self)
            heartbeat().unwatch(self)
            metrics.WEBSOCKETS_OPEN.labels(kind=self.kind).dec()

    def on_session_ended(self) -> None:
        """The heartbeat found this socket's session gone (logged out, even while Redis was
        down; expired; password changed; user deactivated)."""
        if not self.closed:
            logger.info("session ended; closing socket", extra={"user": self.user_id})
            task = asyncio.ensure_future(self.close(code=CLOSE_UNAUTHENTICATED))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def dispatch(self, message: dict) -> None:
        # Channels' default dispatch hops to the DB thread before every handler
        # (aclose_old_connections). Our DB calls go through database_sync_to_async, which
        # already manages connections, so deliveries stay on the event loop.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None or message["type"].startswith("_"):
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def _layer_receive(self) -> dict:
        if self.layer_ok:
            try:
                return await self.channel_layer.receive(self.channel_name)
            except LAYER_ERRORS as exc:
                self.layer_ok = False
                logger.warning("channel layer lost", extra={"error": repr(exc)})
                return {"type": "layer.lost"}
        delay = 0.25
        while True:
            await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                for group in self.groups_wanted:
                    await self.channel_layer.group_add(group, self.channel_name)
            except LAYER_ERRORS:
                delay = min(delay * 2, 5.0)
                continue
            self.layer_ok = True
            self.rejoin_needed = False
            logger.info("channel layer recovered")
            return {"type": "layer.recovered"}

    async def join_groups(self, groups: list[str]) -> bool:
        """Joins the groups; on failure, the layer's recovery or the heartbeat retries."""
        self.groups_wanted = list(groups)
        try:
            for group in groups:
                await self.channel_layer.group_add(group, self.channel_name)
        except LAYER_ERRORS as exc:
            logger.warning("group join failed; will retry", extra={"error": repr(exc)})
            self.rejoin_needed = True
            return False
        self.rejoin_needed = False
        return True

    async def leave_groups(self) -> None:
        for group in self.groups_wanted:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except LAYER_ERRORS:
                break  # entries expire with the layer's group_expiry

    async def group_send(self, group: str, event: dict) -> bool:
        try:
            await self.channel_layer.group_send(group, event)
            return True
        except LAYER_ERRORS as exc:
            metrics.BROADCAST_FAILURES.inc()
            logger.warning("group_send failed", extra={"group": group, "error": repr(exc)})
            return False

    async def accept(self, subprotocol=None, headers=None):
        self.accepted = True
        await super().accept(subprotocol, headers)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        # Never the default code (1000): a close the client should recover from is 1012.
        if self.closed:
            return
        self.closed = True
        await super().close(code=code or CLOSE_SERVICE_RESTART, reason=reason)

    async def refuse(self, code: int, reason: str) -> None:
        """Accept, then close with a 4xxx code the browser sees (a pre-accept refusal reaches
        it as 1006, which the HTMX extension retries forever). Nothing else is sent."""
        note_refusal(code, reason, self.scope.get("path"))
        await super().accept()
        await self.close(code=code)

    async def websocket_disconnect(self, message: dict) -> None:
        try:
            await self.disconnect(message.get("code", 1006))
        finally:
            raise StopConsumer()

    async def layer_lost(self, event: dict) -> None:
        pass

    async def layer_recovered(self, event: dict) -> None:
        pass

    async def session_end(self, event: dict) -> None:
        """The user logged out over HTTP: this socket's credentials are gone."""
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def drain(self, code: int) -> None:
        await self.close(code=code)

    def start_lifetime_timer(self) -> asyncio.TimerHandle:
        """Closes with 1012 after CHAT_SOCKET_MAX_AGE (jittered): the client reconnects and
        replays. This bounds how long a group entry can outlive a crashed process. A timer,
        not a task: idle sockets are many, and a sleeping task costs far more memory."""
        delay = settings.CHAT_SOCKET_MAX_AGE * random.uniform(0.85, 1.0)
        return asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self.close(code=CLOSE_SERVICE_RESTART))
        )
