"""One presence heartbeat per process, not one per socket.

Every open chat socket must refresh its presence entry before CHAT_PRESENCE_TTL lapses and
learn the conversation's newest sequence number (to heal a tail gap the layer dropped). Done
per socket, that is a sleeping task and a Redis round trip per socket per interval: at
10,000 idle sockets, ~670 round trips a second and a few KB of task per socket. Here one
task per event loop refreshes every conversation hub's entries (chat.hub: one per user per
conversation per process) and notes its newest sequence, in one pipeline per Redis shard,
and a hub does work only when its answer asks for it (presence changed, a newer sequence, a
queued broadcast, a missed beat to heal).

The same beat asks the database, in one hop for the whole process: each conversation's newest
sequence (a message stored by a process that died before broadcasting it is found here, and
the database outranks a Redis note that outlived a restore), and whether each socket's
session is still live (logout while Redis was down, expiry, a password change, a
deactivated user): a socket whose session ended is closed with 4401. With the database down
this part is skipped: sockets are never closed because Postgres blipped.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Protocol

from django.conf import settings
from django.db import DatabaseError

from chat import selectors
from chat.presence import presence_store
from parley import dbcalls
from parley.perloop import per_loop

logger = logging.getLogger(__name__)


class Beating(Protocol):
    """A conversation's hub (chat.hub): one per conversation per process."""

    conversation_id: int
    epoch: str

    def position(self) -> tuple[int, str]:
        """(newest sequence handed out, epoch)."""

    def presence_entries(self) -> list[tuple[int, str]]:
        """(user id, entry channel) for every user online through this process."""

    def on_heartbeat(
        self, answer: tuple[set[int], int, str | None] | None, before: tuple[int, str]
    ) -> None:
        """Called on the event loop with (online user ids, newest seq, epoch), or None when
        the presence store could not be reached. The epoch is None when the newest sequence
        is Redis' note, not the database's. `before` is the hub's position from before the
        database was read: everything it had handed out was committed by then, so only a
        database that went back can answer less. Must not block; spawns work if any."""


class Authenticated(Protocol):
    user_id: int
    session_key: str
    auth_hash: str

    def on_session_ended(self) -> None:
        """The socket's session is gone (or its user's password changed, or the user was
        deactivated): close it. Must not block."""


class Heartbeat:
    def __init__(self) -> None:
        self.members: dict[int, Beating] = {}  # hubs, by conversation
        self.noted: dict[int, tuple[int, str]] = {}  # the position each hub's newest note wrote
        self.watched: set[Authenticated] = set()  # every open socket, chat and inbox
        self.task: asyncio.Task | None = None

    def add(self, hub: Beating) -> None:
        self.members[hub.conversation_id] = hub
        self._start()

    def watch(self, consumer: Authenticated) -> None:
        self.watched.add(consumer)
        self._start()

    def unwatch(self, consumer: Authenticated) -> None:
        self.watched.discard(consumer)
        self._stop_if_idle()

    def _start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    def _stop_if_idle(self) -> None:
        if not self.members and not self.watched and self.task is not None:
            self.task.cancel()
            self.task = None

    def remove(self, hub: Beating) -> None:
        if self.members.get(hub.conversation_id) is hub:
            del self.members[hub.conversation_id]
            self.noted.pop(hub.conversation_id, None)
        self._stop_if_idle()

    async def run(self) -> None:
        interval = max(settings.CHAT_PRESENCE_TTL / 3, 1.0)
        while self.members or self.watched:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad beat must not stop presence for the process
                logger.exception("presence heartbeat failed")

    async def beat(self) -> None:
        snapshot = dict(self.members)
        watched = list(self.watched)
        before = {cid: hub.position() for cid, hub in snapshot.items()}
        db = await self._read_database(list(snapshot), watched)
        if snapshot:
            # Each hub's newest sequence, noted when it moved since the last beat's note (and
            # not across a restore that happened while the database was read).
            newest = {
                cid: position[0]
                for cid, position in before.items()
                if position[0]
                and position[1] == snapshot[cid].epoch
                and self.noted.get(cid) != position
            }
            answers = await presence_store().heartbeat_many(
                {cid: hub.presence_entries() for cid, hub in snapshot.items()},
                {cid: hub.epoch for cid, hub in snapshot.items()},
                newest,
            )
            self.noted.update((cid, before[cid]) for cid in newest if cid in answers)
            for cid, hub in snapshot.items():
                answer = answers.get(cid)
                if answer is not None:
                    if db is not None and cid in db[0]:
                        answer = (answer[0], *db[0][cid])  # the database's, not Redis' note
                    else:
                        answer = (answer[0], answer[1], None)
                hub.on_heartbeat(answer, before[cid])
        if db is not None:
            _, live_sessions, auth_hashes = db
            for consumer in watched:
                if (
                    consumer.session_key not in live_sessions
                    or auth_hashes.get(consumer.user_id) != consumer.auth_hash
                ):
                    consumer.on_session_ended()

    @staticmethod
    async def _read_database(
        conversation_ids: list[int], watched: list[Authenticated]
    ) -> tuple[dict[int, int], set[str], dict[int, str]] | None:
        """One hop to the DB thread for the whole process; None if the database failed."""

        def read() -> tuple[dict[int, int], set[str], dict[int, str]]:
            return (
                selectors.newest_seqs(conversation_ids) if conversation_ids else {},
                selectors.live_session_keys(list({c.session_key for c in watched})),
                selectors.session_auth_hashes(list({c.user_id for c in watched})),
            )

        try:
            return await dbcalls.db(read)()
        except DatabaseError:
            logger.warning("heartbeat could not read the database; sessions not re-checked")
            return None


# This event loop's heartbeat (parley.perloop).
heartbeat = per_loop(lambda _loop: Heartbeat())
