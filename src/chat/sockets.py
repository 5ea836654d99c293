"""What every Parley websocket shares (chat.consumers has the two kinds), and the close
codes it uses.

A socket holds no channel-layer channel of its own: the events it must hear reach it through
its process's hubs (chat.hub for its conversation, chat.users for its user), so it costs no
Redis subscription and keeps no waiting layer receive, and a Redis outage never ends it.

The HTMX ws extension reconnects only after 1006, 1011, 1012 and 1013, so refusals use 4xxx
codes (no retry) and anything the client should recover from uses 1012.
"""

from __future__ import annotations

import asyncio
import logging
import random

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

import parley_runtime
from chat import events
from chat.heartbeat import heartbeat
from chat.users import TooManySockets, users
from parley import drain, metrics
from parley_runtime import consumer as consumer_runtime

logger = logging.getLogger(__name__)

CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY_SOCKETS = 4409
CLOSE_RATE_LIMITED = 4429


def note_refusal(code: int, reason: str, path: str | None) -> None:
    """Logs and counts a websocket refused by policy (parley_websocket_refusals_total)."""
    logger.info("websocket refused", extra={"code": code, "reason": reason, "path": path})
    metrics.WEBSOCKET_REFUSALS.labels(reason=reason).inc()


async def no_such_socket(scope: dict, receive, send) -> None:
    """Every websocket path no consumer serves: accepted, then closed with 4404, as a refusal
    (logged and counted, no traceback). A bare ASGI app: no hub, no heartbeat."""
    if (await receive())["type"] != "websocket.connect":
        return
    note_refusal(CLOSE_NOT_FOUND, "not_found", scope.get("path"))
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_NOT_FOUND})


class Socket(AsyncWebsocketConsumer):
    """A logged-in user's websocket: counted against the user's socket caps, closed by a
    drain, by its session's end and at CHAT_SOCKET_MAX_AGE."""

    kind = "chat"
    user_id: int
    username: str

    @classmethod
    def as_asgi(cls, **initkwargs):
        """Channels' as_asgi; on the tuned runtime it hands over to the consumer's coroutine
        instead of awaiting it in one more (parley_runtime.consumer)."""
        return consumer_runtime.as_asgi_app(parley_runtime.mode(), cls, initkwargs)

    def __call__(self, scope, receive, send):  # noqa: D102 (ASGI entry)
        self.scope = scope
        self.base_send = send
        self.accepted = False
        self.closed = False
        self.tasks: set[asyncio.Task | asyncio.TimerHandle] = set()  # cancelled at the end
        self.tracked = False
        self.attached = False  # counted in users()
        return consumer_runtime.dispatch_loop(
            parley_runtime.mode(), receive, self.dispatch, finish=self._finish
        )

    def _finish(self) -> None:
        # Cancelled or crashed, background work dies with the socket.
        for task in list(self.tasks):
            task.cancel()
        self.untrack()

    def spawn(self, coroutine) -> None:
        """Runs `coroutine` for this socket: cancelled if the socket ends first."""
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def admit(self, user) -> bool:
        """Counts the socket against its user's caps; past one, refuses it with 4409."""
        self.user_id = user.pk
        self.username = user.get_username()
        self.session_key: str = self.scope.get("session_key") or ""
        self.session_tag = events.session_tag(self.session_key)
        try:
            await users().attach(self)
        except TooManySockets as exc:
            logger.info("too many sockets", extra={"user": self.user_id, "where": str(exc)})
            await self.refuse(CLOSE_TOO_MANY_SOCKETS, "too_many_sockets")
            return False
        self.attached = True
        return True

    def track(self) -> None:
        """The socket is open and live: count it, let a drain close it, and let the process
        heartbeat re-check its session."""
        self.tracked = True
        drain.register(self)
        metrics.WEBSOCKET_CONNECTS.labels(kind=self.kind).inc()
        metrics.WEBSOCKETS_OPEN.labels(kind=self.kind).inc()
        self.auth_hash: str = self.scope["user"].get_session_auth_hash()
        heartbeat().watch(self)
        self.tasks.add(self.start_lifetime_timer())

    def untrack(self) -> None:
        if self.attached:
            self.attached = False
            users().abandon(self)
        if self.tracked:
            self.tracked = False
            drain.unregister(self)
            heartbeat().unwatch(self)
            metrics.WEBSOCKETS_OPEN.labels(kind=self.kind).dec()

    def on_session_ended(self) -> None:
        """The socket's session is gone (logged out, expired, password changed, user
        deactivated): the heartbeat or the user's logout event found it."""
        if not self.closed:
            logger.info("session ended; closing socket", extra={"user": self.user_id})
            self.spawn(self.close(code=CLOSE_UNAUTHENTICATED))

    async def on_read(self, conversation_id: int, seq: int) -> None:
        pass  # for conversation lists

    async def on_joined(self, conversation_id: int) -> None:
        pass  # for conversation lists

    async def on_mention(self, conversation_id: int, seq: int) -> None:
        pass  # for conversation lists (a conversation page sees the mention in the message)

    async def dispatch(self, message: dict) -> None:
        # Channels' default dispatch hops to the database thread before every handler
        # (aclose_old_connections); database calls here go through parley.dbcalls instead.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None or message["type"].startswith("_"):
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

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
            for task in list(self.tasks):
                task.cancel()
            await self.disconnect(message.get("code", 1006))
            if self.attached:
                self.attached = False
                users().detach(self)
        finally:
            raise StopConsumer()

    async def drain(self, code: int) -> None:
        await self.close(code=code)

    def start_lifetime_timer(self) -> asyncio.TimerHandle:
        """Closes with 1012 after CHAT_SOCKET_MAX_AGE (jittered): the client reconnects and
        replays. A timer, not a task: idle sockets are many, and a sleeping task costs far
        more memory."""
        delay = settings.CHAT_SOCKET_MAX_AGE * random.uniform(0.85, 1.0)
        return asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self.close(code=CLOSE_SERVICE_RESTART))
        )
