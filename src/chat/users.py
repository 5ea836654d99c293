"""One user hub per user per process with a socket of that user here: the user's sockets
(chat pages and conversation lists), its one subscription to the user's group (logout, read
markers, new conversations: chat.events' user events), and the cap on how many sockets one
user may hold open, per process and across the cluster (the presence store counts them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from django.conf import settings

from chat import events
from chat.presence import presence_store
from parley.layer import LAYER_ERRORS, Subscription
from parley.perloop import per_loop

logger = logging.getLogger(__name__)


class UserSocket(Protocol):
    """Any of a user's sockets (chat.consumers)."""

    user_id: int
    session_tag: str
    closed: bool

    def on_session_ended(self) -> None:
        """Its session is gone: close with 4401. Must not block."""

    async def on_read(self, conversation_id: int, seq: int) -> None: ...

    async def on_joined(self, conversation_id: int) -> None: ...


class TooManySockets(Exception):
    """The user holds CHAT_MAX_SOCKETS_PER_USER_PROCESS sockets here, or
    CHAT_MAX_SOCKETS_PER_USER in the cluster."""


class UserHub:
    def __init__(self, registry: Users, user_id: int) -> None:
        self.registry = registry
        self.user_id = user_id
        self.sockets: dict[UserSocket, None] = {}
        self.subscription = Subscription(events.user_group(user_id), self.dispatch)

    async def dispatch(self, message: dict) -> None:
        event = events.parse(message)
        if event is None:
            return
        kind = event["type"]
        for socket in list(self.sockets):
            if socket.closed:
                continue
            if kind == events.SESSION_ENDED:
                # Without a session: every session of the user (an older release's logout).
                if event.get("session", socket.session_tag) == socket.session_tag:
                    socket.on_session_ended()
            elif kind == events.READ:
                await socket.on_read(event["conversation_id"], event["seq"])
            elif kind == events.JOINED:
                await socket.on_joined(event["conversation_id"])


class Users:
    """This event loop's user hubs, by user."""

    def __init__(self) -> None:
        self.hubs: dict[int, UserHub] = {}
        self.counted: set[UserSocket] = set()  # sockets the cluster count includes

    async def attach(self, socket: UserSocket) -> None:
        """Counts the socket against its user's caps and lets it hear its user's events.
        Raises TooManySockets (nothing counted) past either cap."""
        hub = self.hubs.get(socket.user_id)
        if hub is not None and len(hub.sockets) >= settings.CHAT_MAX_SOCKETS_PER_USER_PROCESS > 0:
            raise TooManySockets("per process")
        if hub is None:
            hub = self.hubs[socket.user_id] = UserHub(self, socket.user_id)
        hub.sockets[socket] = None  # counted here before the cluster is asked
        if settings.CHAT_MAX_SOCKETS_PER_USER <= 0:
            return
        try:
            opened = await presence_store().socket_opened(
                socket.user_id, settings.CHAT_MAX_SOCKETS_PER_USER
            )
        except LAYER_ERRORS as exc:
            # Redis down: the per-process cap still holds; sockets must open without it.
            logger.warning("socket count unavailable", extra={"error": repr(exc)})
            return
        except BaseException:
            self.detach(socket)
            raise
        if not opened:
            self.detach(socket)
            raise TooManySockets("in the cluster")
        self.counted.add(socket)

    def detach(self, socket: UserSocket) -> None:
        hub = self.hubs.get(socket.user_id)
        if hub is not None and hub.sockets.pop(socket, 0) is None and not hub.sockets:
            del self.hubs[socket.user_id]
            task = asyncio.ensure_future(hub.subscription.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if socket in self.counted:
            self.counted.discard(socket)
            task = asyncio.ensure_future(presence_store().socket_closed(socket.user_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def abandon(self, socket: UserSocket) -> None:
        """As detach, from a socket being cancelled (the server is stopping): the cluster
        count lapses with this process's liveness."""
        hub = self.hubs.get(socket.user_id)
        if hub is not None and hub.sockets.pop(socket, 0) is None and not hub.sockets:
            del self.hubs[socket.user_id]
            hub.subscription.cancel()
        self.counted.discard(socket)

    def stale_subscriptions(self) -> list[Subscription]:
        return [hub.subscription for hub in self.hubs.values() if hub.subscription.stale()]


# This event loop's user hubs (parley.perloop).
users = per_loop(lambda _loop: Users())
