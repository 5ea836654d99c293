"""One presence heartbeat per process, not one per socket.

Every open chat socket must refresh its presence entry before CHAT_PRESENCE_TTL lapses and
learn the conversation's newest sequence number (to heal a tail gap the layer dropped). Done
per socket, that is a sleeping task and a Redis round trip per socket per interval: at
10,000 idle sockets, ~670 round trips a second and a few KB of task per socket. Here one
task per event loop refreshes every socket in one pipeline per Redis shard, and a socket is
woken only when its answer asks for work (presence changed, a newer sequence, a queued
broadcast, a group to rejoin, a missed beat to heal).
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from typing import Protocol

from django.conf import settings

from chat.presence import presence_store

logger = logging.getLogger(__name__)


class Beating(Protocol):
    conversation_id: int
    user_id: int
    channel_name: str

    def on_heartbeat(self, answer: tuple[set[int], int] | None) -> None:
        """Called on the event loop with (online user ids, newest seq), or None when the
        presence store could not be reached. Must not block; spawns work if any."""


class Heartbeat:
    def __init__(self) -> None:
        self.members: dict[int, set[Beating]] = {}
        self.task: asyncio.Task | None = None

    def add(self, consumer: Beating) -> None:
        self.members.setdefault(consumer.conversation_id, set()).add(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    def remove(self, consumer: Beating) -> None:
        group = self.members.get(consumer.conversation_id)
        if group is None:
            return
        group.discard(consumer)
        if not group:
            del self.members[consumer.conversation_id]
        if not self.members and self.task is not None:
            self.task.cancel()
            self.task = None

    async def run(self) -> None:
        interval = max(settings.CHAT_PRESENCE_TTL / 3, 1.0)
        while self.members:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad beat must not stop presence for the process
                logger.exception("presence heartbeat failed")

    async def beat(self) -> None:
        snapshot = {cid: list(group) for cid, group in self.members.items()}
        answers = await presence_store().heartbeat_many(
            {cid: [(c.user_id, c.channel_name) for c in group] for cid, group in snapshot.items()}
        )
        for cid, group in snapshot.items():
            answer = answers.get(cid)
            for consumer in group:
                consumer.on_heartbeat(answer)


_beats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeat] = (
    weakref.WeakKeyDictionary()
)


def heartbeat() -> Heartbeat:
    """This event loop's heartbeat (tests run many loops in one process)."""
    loop = asyncio.get_running_loop()
    beat = _beats.get(loop)
    if beat is None:
        beat = _beats[loop] = Heartbeat()
    return beat
