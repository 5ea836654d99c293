"""One hub per conversation per process: the conversation's sockets here, its one
subscription to the conversation's group, its presence (chat.online), and its lifecycle.
The order of its messages belongs to its stream (chat.stream); docs/delivery.md.

Two kinds of socket attach: chat pages (`receivers`: handed every message, in order, by the
stream) and conversation lists (`followers`: one shared row per message, rendered once here
for all of them). A process subscribes once per conversation, whatever the number of
sockets: a gap costs one database read, a message one render.

A message's walk: the sender's socket (chat.consumers) -> services.message_send (stores) ->
hub.publish -> stream.arrive -> every socket's deliver, here; then events.broadcast -> on
every other process, the hub's subscription -> dispatch -> stream.arrive -> deliver.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from django.db import DatabaseError

from chat import events, fragments, services
from chat.delivery import ConversationStream, Receiver, frame_limit
from chat.heartbeat import Answer, heartbeat
from chat.online import HubPresence
from chat.positions import Position, Row
from chat.stream import frames
from parley import dbcalls, metrics
from parley.admission import admission
from parley.layer import PROCESS, Subscription
from parley.perloop import per_loop

logger = logging.getLogger(__name__)

UNBROADCAST_LIMIT = 500
CLOSE_FORBIDDEN = 4403


class ChatSocket(Receiver, Protocol):
    """A conversation page's socket (chat.consumers.ChatConsumer)."""

    user_id: int
    attached_at: float  # monotonic, set by attach

    def revoke(self) -> None:
        """Its user is no longer a participant: close with 4403 at once. Must not block."""


class Follower(Protocol):
    """A conversation list's socket (chat.consumers.InboxConsumer)."""

    user_id: int
    closed: bool
    attached_at: float  # monotonic, set by follow (the latest)

    async def send_row(self, conversation_id: int, frame: str) -> None: ...

    async def unfollow(self, conversation_id: int) -> None:
        """Its user left the conversation: drop the row."""


class ConversationHub:
    def __init__(self, hubs: Hubs, conversation_id: int) -> None:
        self.hubs = hubs
        self.conversation_id = conversation_id
        self.receivers: dict[ChatSocket, None] = {}  # insertion-ordered sets
        self.followers: dict[Follower, None] = {}
        self.stream = ConversationStream(conversation_id, self.receivers)
        self.presence = HubPresence(
            conversation_id, self.local_broadcast, lambda: self.subscription.channel
        )
        self.listed = 0  # the newest sequence the followers were sent a row for
        # Broadcasts of messages stored here that the layer has not taken yet, in order.
        self.unbroadcast: list[dict] = []
        self.broadcast_lock = asyncio.Lock()
        self.beat_missed = False
        self.beat_task: asyncio.Task | None = None
        self.closed = False
        self.reserved = 0  # sockets between Hubs.get and attach (or release)
        self.subscription = Subscription(
            (events.conversation_group(conversation_id),), self.dispatch, self.recover
        )

    publisher = PROCESS  # this process's name in the events it publishes

    # --- sockets --------------------------------------------------------------------------

    async def attach(self, socket: ChatSocket, members: dict[int, str], db: Position) -> None:
        """`members` and `db` are the socket's connect read, taken after the hub joined the
        group: anything stored after it arrives live."""
        self.reserved -= 1
        socket.attached_at = time.monotonic()
        self.receivers[socket] = None
        self.presence.set_members(members)  # the freshest read wins
        position = self.stream.position
        if position is None:
            await self.stream.start(db)
        elif position.epoch != db.epoch:
            await self.restart(db, "restored")  # restored since this hub last heard
        elif db.seq > position.seq:
            self.stream.expect(db.seq, "tail")  # stored, not heard yet: usually in flight
        self.presence.arrived(socket.user_id)

    def detach(self, socket: ChatSocket) -> bool:
        """Returns whether the hub is left idle (then `close_if_idle`)."""
        if self.receivers.pop(socket, 0) is None:
            self.presence.left(socket.user_id)
            if not self.receivers:
                self.stream.close()  # nobody to hand rows to: the next socket starts afresh
                self.stream = ConversationStream(self.conversation_id, self.receivers)
        return self.idle()

    def follow(self, follower: Follower) -> None:
        follower.attached_at = time.monotonic()
        self.followers[follower] = None

    def unfollow(self, follower: Follower) -> bool:
        self.followers.pop(follower, None)
        return self.idle()

    def idle(self) -> bool:
        return not self.receivers and not self.followers and self.reserved <= 0 and not self.closed

    async def release(self) -> None:
        """A socket that got the hub and will not attach (refused)."""
        self.reserved -= 1
        await self.close_if_idle()

    def unreserve(self) -> None:
        """As release, from a socket that is being cancelled."""
        self.reserved -= 1
        if self.idle():
            self.abandon()

    async def close_if_idle(self) -> None:
        if self.idle():
            await self.close()

    async def local_broadcast(self, fragment: str, but_user: int | None = None) -> None:
        """`fragment` to every chat socket here (but the user `but_user`'s)."""
        messages = frames((fragment,), frame_limit())
        for socket in list(self.receivers):
            if socket.user_id != but_user and not socket.closed:
                try:
                    await socket.deliver(messages)
                except Exception:
                    logger.exception("could not send a frame to a socket")

    # --- messages ---------------------------------------------------------------------------

    async def publish(self, row: Row, event: dict) -> bool:
        """A message stored by a socket here: to the sockets here at once, then to the other
        processes through the layer. False if the layer has not taken it yet (it stays queued
        and goes out with the next send, the layer's recovery or the next heartbeat)."""
        await self.stream.arrive(row)
        await self._list(event)
        self.unbroadcast.append(event)
        # Bounded: past this, other processes still heal from the database by sequence.
        del self.unbroadcast[:-UNBROADCAST_LIMIT]
        return await self.flush_broadcasts()

    async def flush_broadcasts(self) -> bool:
        if not self.unbroadcast:
            return True
        async with self.broadcast_lock:
            while self.unbroadcast:
                # Published now: one the layer refused earlier is not "late" on arrival.
                self.unbroadcast[0]["t"] = time.time()
                if not await events.broadcast(self.unbroadcast[0]):
                    return False
                self.unbroadcast.pop(0)
            return True

    async def dispatch(self, message: dict) -> None:
        """An event from the conversation's group (this process's own included)."""
        event = events.parse(message)
        if event is None:
            return
        kind = event["type"]
        if kind == events.MESSAGE:
            if "t" in event:
                admission().note_delay(event.get("from", ""), event["t"])
            if self.receivers or self.reserved:
                await self.stream.arrive(Row(event["seq"], event["frame"]))
            await self._list(event)
        elif kind == events.TYPING:
            await self.local_broadcast(event["frame"], but_user=event["user_id"])
        elif kind == events.PRESENCE:
            await self.presence.heard(event)
        elif kind == events.MEMBERS:
            self.revoke(set(event["removed"]))

    async def _list(self, event: dict) -> None:
        """The conversation lists here show the message's row (rendered once for all)."""
        if not self.followers or event["seq"] <= self.listed or "preview" not in event:
            return
        self.listed = event["seq"]
        frame = fragments.conversation_row_live_html(
            conversation_id=self.conversation_id,
            last_seq=event["seq"],
            preview=event["preview"],
            sender=event.get("sender", ""),
            at=event.get("at", 0.0),
        )
        for follower in list(self.followers):
            if not follower.closed:
                await follower.send_row(self.conversation_id, frame)

    def revoke(self, user_ids: set[int]) -> None:
        """These users are no longer participants: their sockets here close or drop the row."""
        for socket in list(self.receivers):
            if socket.user_id in user_ids:
                socket.revoke()
        for follower in list(self.followers):
            if follower.user_id in user_ids:
                task = asyncio.ensure_future(follower.unfollow(self.conversation_id))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # --- outages and the heartbeat ----------------------------------------------------------

    async def recover(self) -> None:
        """The layer is back: whatever was broadcast while nobody listened is in the
        database; what the layer refused goes out; presence entries are written again."""
        self.beat_missed = False
        try:
            await self.stream.heal("recovery")
        except DatabaseError:
            self.beat_missed = True  # the next beat tries again
        await self.flush_broadcasts()
        await self.presence.rewrite()

    def on_heartbeat(self, beat: Answer) -> None:
        """The process heartbeat's answer for this conversation. Must not block: spawns what
        work the answer asks for."""
        if self.closed:
            return
        if beat.members is not None:
            # Only sockets attached before the read: a later one read its own membership.
            gone = {s.user_id for s in self.receivers if s.attached_at < beat.read_at}
            gone |= {f.user_id for f in self.followers if f.attached_at < beat.read_at}
            if gone - beat.members:
                self.revoke(gone - beat.members)
        if beat.online is None:
            self.beat_missed = True  # pub/sub reconnects silently: read the backlog next time
            return
        if self.beat_task is not None and not self.beat_task.done():
            return  # the previous beat's work is still running (a slow heal)
        self.beat_task = asyncio.ensure_future(self._after_heartbeat(beat))

    async def _after_heartbeat(self, beat: Answer) -> None:
        await self.presence.beat(beat.online or set())
        if self.subscription.stale():
            await self.subscription.join()
        await self.flush_broadcasts()
        position = self.stream.position
        if position is None:
            return
        if beat.db is not None and (beat.db.epoch != position.epoch or beat.went_back):
            await self.restart(beat.db, "restored")
        elif self.beat_missed:
            try:
                await self.stream.heal("recovery")
            except DatabaseError:
                return
            self.beat_missed = False
        elif beat.newest > position.seq:
            self.stream.expect(beat.newest, "tail")  # usually still in flight; read if not

    async def restart(self, db: Position, reason: str) -> None:
        """The database holds another history than this hub handed out (a restore, or a
        history that went back): a new epoch if it is still the one we handed out, and every
        socket here starts over from it."""
        position = self.stream.position
        if position is not None and db.epoch == position.epoch:
            epoch = await dbcalls.db(services.conversation_new_epoch)(
                conversation_id=self.conversation_id, seen_epoch=db.epoch
            )
            db = Position(db.seq, epoch)
        metrics.HISTORY_RESETS.inc()
        await self.stream.restart(db, reason)

    def presence_entries(self) -> list[tuple[int, str]]:
        return self.presence.entries()

    # --- the end --------------------------------------------------------------------------

    def abandon(self) -> None:
        """Stops at once, saying goodbye to nobody (the server is stopping): presence entries
        lapse after CHAT_PRESENCE_TTL, the group entry goes with the process."""
        if self.closed:
            return
        self.closed = True
        self.hubs.forget(self)
        self.stream.close()
        self.presence.cancel()
        self.subscription.cancel()
        if self.beat_task is not None and not self.beat_task.done():
            self.beat_task.cancel()

    async def close(self) -> None:
        if self.closed:
            return
        subscription = self.subscription
        self.abandon()
        await self.presence.goodbye()
        await subscription.close()


class Hubs:
    """This event loop's hubs, by conversation."""

    def __init__(self) -> None:
        self.hubs: dict[int, ConversationHub] = {}

    def hub(self, conversation_id: int) -> ConversationHub:
        """The conversation's hub, made (and subscribing) if there is none."""
        hub = self.hubs.get(conversation_id)
        if hub is None:
            hub = self.hubs[conversation_id] = ConversationHub(self, conversation_id)
            metrics.CONVERSATIONS_ACTIVE.set(len(self.hubs))
            heartbeat().add(hub)
            admission().start()
        return hub

    async def get(self, conversation_id: int) -> ConversationHub:
        """The conversation's hub, reserved for a socket that will attach (or release it),
        once it joined the group (or its join is being retried)."""
        hub = self.hub(conversation_id)
        hub.reserved += 1  # not closed under us while the socket reads and attaches
        try:
            await asyncio.shield(hub.subscription.ready)
        except BaseException:  # the socket went away while the hub was joining
            hub.unreserve()
            raise
        return hub

    def forget(self, hub: ConversationHub) -> None:
        if self.hubs.get(hub.conversation_id) is hub:
            del self.hubs[hub.conversation_id]
            heartbeat().remove(hub)
            metrics.CONVERSATIONS_ACTIVE.set(len(self.hubs))
            if not self.hubs:
                admission().stop()  # no sockets: nothing to measure the loop for


# This event loop's hubs (parley.perloop).
hubs = per_loop(lambda _loop: Hubs())
