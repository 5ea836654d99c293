"""Who is online in one conversation, as one process keeps it (its hub's, chat.hub): a socket
holds no copy, so its memory does not grow with the room.

A user's arrival or departure is written to the presence store (chat.presence) and broadcast
only when it is their first socket here or their last, and changes are coalesced: one write
and at most one broadcast per conversation per process per CHAT_PRESENCE_COALESCE_SECONDS,
however many sockets (re)connect meanwhile. Conversations with more than
CHAT_PRESENCE_MAX_MEMBERS members show no presence at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from django.conf import settings

from chat import events, fragments
from chat.presence import presence_store
from parley import metrics
from parley.layer import LAYER_ERRORS

LocalBroadcast = Callable[[str], Awaitable[None]]


class HubPresence:
    def __init__(
        self,
        conversation_id: int,
        local_broadcast: LocalBroadcast,
        entry_name: Callable[[], str],
    ) -> None:
        self.conversation_id = conversation_id
        self.local_broadcast = local_broadcast  # a frame to this process's sockets
        self.entry_name = entry_name  # this process's name in the entries ("": none yet)
        self.members: dict[int, str] = {}
        self.enabled = True
        self.local_users: dict[int, int] = {}  # sockets here, by user
        self.online: set[int] = set()  # the conversation's online users, as last heard
        self.pending: dict[int, bool] = {}  # local arrivals/departures not written yet
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.closed = False

    def set_members(self, members: dict[int, str]) -> None:
        """The freshest read of the participants (id -> username)."""
        self.members = members
        self.enabled = len(members) <= settings.CHAT_PRESENCE_MAX_MEMBERS

    def arrived(self, user_id: int) -> None:
        count = self.local_users.get(user_id, 0)
        self.local_users[user_id] = count + 1
        if count == 0:
            self._changed(user_id, True)

    def left(self, user_id: int) -> None:
        count = self.local_users.get(user_id, 1) - 1
        if count > 0:
            self.local_users[user_id] = count
        elif self.local_users.pop(user_id, None) is not None:
            self._changed(user_id, False)

    def html(self) -> list[str]:
        """Everyone online, for a socket that just connected (its page shows all offline)."""
        if not self.enabled:
            return []
        return [
            fragments.presence_html(uid, name, True)
            for uid, name in self.members.items()
            if uid in self.online
        ]

    def entries(self) -> list[tuple[int, str]]:
        """(user id, entry name) for every user online through this process (the heartbeat
        refreshes them)."""
        channel = self.entry_name()
        if not self.enabled or not channel:
            return []
        return [(uid, channel) for uid in self.local_users]

    def _changed(self, user_id: int, online: bool) -> None:
        if not self.enabled:
            return
        self.pending[user_id] = online
        if self.timer is None and not self.closed:
            self.timer = asyncio.get_running_loop().call_later(
                settings.CHAT_PRESENCE_COALESCE_SECONDS, self._due
            )

    def _due(self) -> None:
        self.timer = None
        if self.task is not None and not self.task.done():
            # One write at a time; what is pending goes with the next one.
            self.task.add_done_callback(lambda _t: self._due_again())
            return
        self.task = asyncio.ensure_future(self.flush())

    def _due_again(self) -> None:
        if self.pending and self.timer is None and not self.closed:
            self._due()

    async def flush(self) -> None:
        """Writes the pending arrivals and departures in one round trip and broadcasts the
        members whose presence changed, in one event (none if nobody's did)."""
        pending, self.pending = self.pending, {}
        channel = self.entry_name()
        if not pending or not channel:
            self.pending.update(pending)  # written once the hub has joined (its recovery)
            return
        joins = [uid for uid, on in pending.items() if on]
        leaves = [uid for uid, on in pending.items() if not on]
        try:
            online = await presence_store().update(self.conversation_id, channel, joins, leaves)
        except LAYER_ERRORS:
            return  # the heartbeat rewrites every local user's entry when Redis is back
        changes = await self.apply(online)
        if changes:
            metrics.PRESENCE_BROADCASTS.inc()
            uid, on = changes[0]
            frame = fragments.presence_html(uid, self.members.get(uid, ""), on)
            await events.broadcast(
                events.presence(conversation_id=self.conversation_id, changes=changes, frame=frame)
            )

    async def apply(self, online: set[int]) -> list[list]:
        """Takes `online` as the conversation's online users; tells the sockets here about
        the members whose presence that changes. Returns [[user id, online], ...] changed."""
        if not self.enabled:
            return []
        changes = [[uid, uid in online] for uid in (online ^ self.online) if uid in self.members]
        self.online = set(online)
        if changes:
            await self.local_broadcast(
                "".join(fragments.presence_html(uid, self.members[uid], on) for uid, on in changes)
            )
        return changes

    async def heard(self, event: dict) -> None:
        """A presence event from any process (this one's included)."""
        changes = event.get("changes") or [[event["user_id"], event["online"]]]
        online = set(self.online)
        for uid, on in changes:
            if uid in self.local_users and not on:
                continue  # still online here, whatever another process saw
            (online.add if on else online.discard)(uid)
        await self.apply(online)

    async def beat(self, online: set[int]) -> None:
        """The heartbeat's read of who is online (local users count, whatever it says)."""
        await self.apply(online | set(self.local_users))

    async def rewrite(self) -> None:
        """Writes every local user's entry again (Redis came back empty)."""
        self.pending.update(dict.fromkeys(self.local_users, True))
        await self.flush()

    def cancel(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def goodbye(self) -> None:
        """Whoever was online through this process is not any more (the hub closes)."""
        self.cancel()
        self.pending.update(dict.fromkeys(self.pending, False))
        self.pending.update(dict.fromkeys(self.local_users, False))
        self.local_users.clear()
        await self.flush()
