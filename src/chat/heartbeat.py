"""One heartbeat per process, not one per socket: every CHAT_PRESENCE_TTL / 3 seconds.

In one Redis pipeline per shard it refreshes every conversation hub's presence entries
(chat.online), notes each hub's newest sequence (chat.presence) and this process's
liveness (its users' socket counts keep counting); in one hop to the database it reads each
conversation's position and participants, and whether each socket's session is still live.
Each hub is then told what its conversation looks like (`Answer`) and does work only when
that asks for it (presence changed, a newer sequence, a history that went back, a member
removed, a missed beat to heal). A socket whose session ended (logout while Redis was down,
expiry, a password change, a deactivated user) is closed with 4401. With the database down
that part is skipped: sockets are never closed because Postgres blipped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from django.db import DatabaseError

from chat import selectors
from chat.positions import Position
from chat.presence import presence_store
from chat.stream import went_back
from chat.users import users
from parley import dbcalls
from parley.perloop import per_loop

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one beat learned about a conversation (chat.hub.Beat)."""

    online: set[int] | None  # who is online; None when the presence store did not answer
    db: Position | None  # the database's position; None when it did not answer
    newest: int  # the newest sequence known to exist (the database's, else Redis' note)
    members: frozenset[int] | None  # the participants; None when the database did not answer
    went_back: bool  # the database holds fewer than was handed out or noted in its epoch
    read_at: float  # when the database read began (monotonic): sockets attached later are newer


class Beating(Protocol):
    """A conversation's hub (chat.hub)."""

    conversation_id: int

    @property
    def stream(self): ...

    def presence_entries(self) -> list[tuple[int, str]]: ...

    def on_heartbeat(self, beat: Answer) -> None:
        """Called on the event loop; must not block (spawns work if any)."""


class Authenticated(Protocol):
    user_id: int
    session_key: str
    auth_hash: str

    def on_session_ended(self) -> None:
        """The socket's session is gone: close it. Must not block."""


class Heartbeat:
    def __init__(self) -> None:
        self.members: dict[int, Beating] = {}  # hubs, by conversation
        self.noted: dict[int, Position] = {}  # the position each hub's newest note wrote
        self.watched: set[Authenticated] = set()  # every open socket, chat and list
        self.task: asyncio.Task | None = None

    def add(self, hub: Beating) -> None:
        self.members[hub.conversation_id] = hub
        self._start()

    def remove(self, hub: Beating) -> None:
        if self.members.get(hub.conversation_id) is hub:
            del self.members[hub.conversation_id]
            self.noted.pop(hub.conversation_id, None)
        self._stop_if_idle()

    def watch(self, socket: Authenticated) -> None:
        self.watched.add(socket)
        self._start()

    def unwatch(self, socket: Authenticated) -> None:
        self.watched.discard(socket)
        self._stop_if_idle()

    def _start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    def _stop_if_idle(self) -> None:
        if not self.members and not self.watched and self.task is not None:
            self.task.cancel()
            self.task = None

    async def run(self) -> None:
        interval = max(settings.CHAT_PRESENCE_TTL / 3, 1.0)
        while self.members or self.watched:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad beat must not stop presence for the process
                logger.exception("heartbeat failed")

    async def beat(self) -> None:
        hubs = dict(self.members)
        watched = list(self.watched)
        before = {cid: hub.stream.position for cid, hub in hubs.items()}
        read_at = time.monotonic()
        db = await self._read_database(list(hubs), watched)
        states = db[0] if db is not None else {}
        # Each hub's newest sequence, noted when it moved since its last note (and not across
        # a restart that happened while the database was read).
        positions = {cid: p for cid, p in before.items() if p is not None}
        newest = {
            cid: p.seq
            for cid, p in positions.items()
            if p.seq and p == hubs[cid].stream.position and self.noted.get(cid) != p
        }
        answers = await presence_store().heartbeat_many(
            {cid: hub.presence_entries() for cid, hub in hubs.items()},
            {cid: p.epoch for cid, p in positions.items()},
            newest,
        )
        self.noted.update((cid, positions[cid]) for cid in newest if cid in answers)
        for cid, hub in hubs.items():
            online, noted = answers.get(cid, (None, 0))
            state = states.get(cid)
            dbpos, participants = state if state is not None else (None, None)
            seen = before[cid]
            back = dbpos is not None and (
                (seen is not None and went_back(dbpos, seen.seq, seen.epoch))
                or went_back(dbpos, noted, dbpos.epoch)
            )
            hub.on_heartbeat(
                Answer(
                    online=online,
                    db=dbpos,
                    newest=dbpos.seq if dbpos is not None else noted,
                    members=participants,
                    went_back=back,
                    read_at=read_at,
                )
            )
        for subscription in users().stale_subscriptions():
            await subscription.join()
        if db is not None:
            _, live_sessions, auth_hashes = db
            for socket in watched:
                if (
                    socket.session_key not in live_sessions
                    or auth_hashes.get(socket.user_id) != socket.auth_hash
                ):
                    socket.on_session_ended()

    @staticmethod
    async def _read_database(
        conversation_ids: list[int], watched: list[Authenticated]
    ) -> tuple[dict[int, tuple[Position, frozenset[int]]], set[str], dict[int, str]] | None:
        """One hop to the database thread for the whole process; None if it failed."""

        def read():
            return (
                selectors.conversation_states(conversation_ids) if conversation_ids else {},
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
