"""Each user with a socket in this process: their sockets (chat pages and conversation
lists), and the cap on how many one user may hold open, per process and across the cluster
(the presence store counts them). One subscription per process is in every such user's
group (logout, read markers, new conversations, mentions: chat.events' user events), so a user costs
one Redis subscription of the group, not a channel, a task and a queue.
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

    async def on_mention(self, conversation_id: int, seq: int) -> None: ...


class TooManySockets(Exception):
    """The user holds CHAT_MAX_SOCKETS_PER_USER_PROCESS sockets here, or
    CHAT_MAX_SOCKETS_PER_USER in the cluster."""


class Users:
    """This event loop's users, by id: their sockets here."""

    def __init__(self) -> None:
        self.sockets: dict[int, dict[UserSocket, None]] = {}
        self.counted: set[UserSocket] = set()  # sockets the cluster count includes
        self.subscription: Subscription | None = None

    async def attach(self, socket: UserSocket) -> None:
        """Counts the socket against its user's caps and lets it hear its user's events.
        Raises TooManySockets (nothing counted) past either cap."""
        uid = socket.user_id
        mine = self.sockets.get(uid)
        if mine is not None and len(mine) >= settings.CHAT_MAX_SOCKETS_PER_USER_PROCESS > 0:
            raise TooManySockets("per process")
        if mine is None:
            mine = self.sockets[uid] = {}
            if self.subscription is None:
                self.subscription = Subscription((), self.dispatch)
            await self.subscription.add(events.user_group(uid))
            mine = self.sockets.setdefault(uid, mine)  # another socket may have come meanwhile
        mine[socket] = None  # counted here before the cluster is asked
        if settings.CHAT_MAX_SOCKETS_PER_USER <= 0:
            return
        try:
            opened = await presence_store().socket_opened(uid, settings.CHAT_MAX_SOCKETS_PER_USER)
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
        self._forget(socket, leave=True)
        if socket in self.counted:
            self.counted.discard(socket)
            _spawn(presence_store().socket_closed(socket.user_id))

    def abandon(self, socket: UserSocket) -> None:
        """As detach, from a socket being cancelled (the server is stopping): the group entry
        goes with the process, the cluster count lapses with its liveness."""
        self._forget(socket, leave=False)
        self.counted.discard(socket)

    def _forget(self, socket: UserSocket, leave: bool) -> None:
        mine = self.sockets.get(socket.user_id)
        if mine is None or mine.pop(socket, 0) is not None or mine:
            return
        del self.sockets[socket.user_id]
        if leave and self.subscription is not None:
            _spawn(self.subscription.discard(events.user_group(socket.user_id)))

    async def dispatch(self, message: dict) -> None:
        """A user event, for every socket of its user here."""
        event = events.parse(message)
        if event is None or "user_id" not in event:
            return  # a previous release's logout names no user: the heartbeat closes them
        kind = event["type"]
        for socket in list(self.sockets.get(event["user_id"], ())):
            if socket.closed:
                continue
            if kind == events.SESSION_ENDED:
                # Without a session: every session of the user.
                if event.get("session", socket.session_tag) == socket.session_tag:
                    socket.on_session_ended()
            elif kind == events.READ:
                await socket.on_read(event["conversation_id"], event["seq"])
            elif kind == events.JOINED:
                await socket.on_joined(event["conversation_id"])
            elif kind == events.MENTION:
                await socket.on_mention(event["conversation_id"], event["seq"])

    def stale_subscriptions(self) -> list[Subscription]:
        subscription = self.subscription
        return [subscription] if subscription is not None and subscription.stale() else []


def _spawn(coroutine) -> None:
    task = asyncio.ensure_future(coroutine)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


# This event loop's users (parley.perloop).
users = per_loop(lambda _loop: Users())
