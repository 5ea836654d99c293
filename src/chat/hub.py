"""One hub per conversation per process: it listens to the conversation's group once, puts
broadcasts in sequence order, heals a gap with one database read, and hands the same frames
to every socket of that conversation in this process.

Why (issue 17, measured): with every socket subscribed and ordering for itself, a broadcast
that arrived late past the grace period made each socket of the room read the database for
the same missing sequence: 10 reads per gap in a room of 10, 1,000 in a room of 1,000. Those
reads queued on the one database thread with the stores, which slowed the stores, which
opened more gaps: past the knee, throughput fell by 40-80% and messages arrived tens of
seconds late. Here a gap costs one read per process, whatever the room's size.

Presence lives here too: who is online is kept once per conversation per process (a socket
holds no copy, so its memory does not grow with the room), a user's arrival or departure is
written and broadcast only when it is their first socket here or their last, and those changes
are coalesced: one presence write and at most one broadcast per conversation per process per
CHAT_PRESENCE_COALESCE_SECONDS, however many sockets (re)connect meanwhile.

A socket attached to a hub (see `Receiver`) gets `push(rows)` calls with consecutive
sequences only, in order; it sends what follows on from what it has sent and catches up by
itself (from the hub's recent frames or the database) only when it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Protocol

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from chat import fragments, services
from chat.groups import LAYER_ERRORS, conversation_group
from chat.heartbeat import heartbeat
from chat.presence import presence_store
from parley import dbcalls, metrics
from parley.admission import admission
from parley.perloop import per_loop

logger = logging.getLogger(__name__)

BACKLOG_BATCH = 200
# A broadcast that arrives ahead of the next expected sequence is held this long for the
# missing ones: two senders' store-then-publish steps race, so under load broadcasts often
# arrive a few ms out of order, and most gaps fill by themselves.
GAP_GRACE_SECONDS = 0.1
HELD_LIMIT = BACKLOG_BATCH  # held frames past this: read the database now
RECENT_LIMIT = BACKLOG_BATCH  # frames kept for sockets that (re)connect a little behind
UNBROADCAST_LIMIT = 500
REJOIN_SECONDS = 600.0  # the group entry is refreshed this often (the core layer expires it)

Row = tuple[int, str]  # (sequence, frame)


class Receiver(Protocol):
    """What a hub needs of a socket (chat.consumers.ChatConsumer)."""

    user_id: int
    closed: bool

    async def push(self, rows: list[Row]) -> int:
        """Consecutive sequences, in order: send what follows on from what was sent. Returns
        how many frames it sent."""

    async def send_frame(self, frame: str) -> None:
        """Send a fragment as it is (presence, typing)."""

    async def start_over(self, epoch: str, newest: int) -> None:
        """The conversation's history is another: tell the page, go on from `newest`."""

    def on_beat(self) -> None:
        """The process heartbeat passed (the socket retries what it must). Must not block."""


class ConversationHub:
    def __init__(self, hubs: Hubs, conversation_id: int) -> None:
        self.hubs = hubs
        self.conversation_id = conversation_id
        self.group = conversation_group(conversation_id)
        self.layer = get_channel_layer()
        self.channel_name = ""
        self.sockets: dict[Receiver, None] = {}  # insertion-ordered set
        self.members: dict[int, str] = {}
        # Sequencing: the newest sequence handed to the sockets (None until the first socket
        # has read it), frames ahead of it, the highest sequence known to exist, and the
        # timer that reads the database for whatever has not arrived by then.
        self.last_seq: int | None = None
        self.epoch = ""
        self.held: dict[int, str] = {}
        self.expected_upto = 0
        self.gap_timer: asyncio.TimerHandle | None = None
        self.gap_how = "live"
        self.healing: asyncio.Task | None = None
        self.recent: dict[int, str] = {}  # the last RECENT_LIMIT frames handed out, by seq
        self.emit_lock = asyncio.Lock()
        # Broadcasts of messages stored here that the layer has not taken yet, in order.
        self.unbroadcast: list[dict] = []
        self.broadcast_lock = asyncio.Lock()
        # Presence: local sockets per user, the conversation's online users as last heard,
        # and local arrivals/departures not yet written.
        self.local_users: dict[int, int] = {}
        self.presence_enabled = True
        self.online: set[int] = set()
        self.presence_pending: dict[int, bool] = {}
        self.presence_timer: asyncio.TimerHandle | None = None
        self.presence_task: asyncio.Task | None = None
        self.layer_ok = True
        self.beat_missed = False
        self.beat_task: asyncio.Task | None = None
        self.joined_at = 0.0
        self.closed = False
        self.reserved = 0  # sockets between Hubs.get and attach (or release)
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = asyncio.ensure_future(self._run())

    # --- sockets --------------------------------------------------------------------------

    def attach(self, socket: Receiver, members: dict[int, str], newest: int, epoch: str) -> None:
        """`members`, `newest` and `epoch` are the socket's connect read, taken after the hub
        joined the group: anything stored after it arrives live."""
        self.reserved -= 1
        self.sockets[socket] = None
        self.members = members  # the freshest read wins (participants can be added)
        self.presence_enabled = len(members) <= settings.CHAT_PRESENCE_MAX_MEMBERS
        if self.last_seq is None:
            self.last_seq = self.expected_upto = newest
            self.epoch = epoch
            for seq in [s for s in self.held if s <= newest]:
                del self.held[seq]
            if self.held:
                self._expect(min(self.held) - 1, "live")
        elif newest > self.last_seq:
            self._expect(newest, "tail")  # stored, not heard yet: usually in flight
        count = self.local_users.get(socket.user_id, 0)
        self.local_users[socket.user_id] = count + 1
        if count == 0:
            self._presence_changed(socket.user_id, True)

    def detach(self, socket: Receiver) -> bool:
        """Returns whether the hub is left idle (then `close_if_idle`)."""
        if self.sockets.pop(socket, 0) is None:
            count = self.local_users.get(socket.user_id, 1) - 1
            if count > 0:
                self.local_users[socket.user_id] = count
            else:
                self.local_users.pop(socket.user_id, None)
                self._presence_changed(socket.user_id, False)
        return self.idle()

    def idle(self) -> bool:
        return not self.sockets and self.reserved <= 0 and not self.closed

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

    def recent_after(self, after: int) -> list[Row] | None:
        """The frames after `after` that this hub has handed out, if it still has them all."""
        if self.last_seq is None:
            return None
        if after >= self.last_seq:
            return []
        if after + 1 not in self.recent:
            return None
        return [(seq, self.recent[seq]) for seq in range(after + 1, self.last_seq + 1)]

    def presence_html(self) -> str:
        """Everyone online, for a socket that just connected (its page shows all offline)."""
        if not self.presence_enabled:
            return ""
        return "".join(
            fragments.presence_html(uid, name, True)
            for uid, name in self.members.items()
            if uid in self.online
        )

    # --- ordering and healing ---------------------------------------------------------------

    async def offer(self, seq: int, frame: str) -> None:
        """A stored message's frame, from the layer or from a sender in this process."""
        if self.last_seq is None:
            self.held[seq] = frame  # the first socket's read will say where we are
            return
        if seq <= self.last_seq:
            return  # already handed out (our own broadcast coming back, a duplicate)
        if seq > self.last_seq + 1:
            self.held[seq] = frame
            self._expect(seq - 1, "live", now=len(self.held) > HELD_LIMIT)
            return
        async with self.emit_lock:
            if self.last_seq is not None and seq == self.last_seq + 1:
                await self._emit([(seq, frame)])

    async def _emit(self, rows: list[Row]) -> None:
        """With emit_lock held: hands out `rows` (they follow on from last_seq) and the held
        frames that follow on from them."""
        held = self.held
        while held and (frame := held.pop(rows[-1][0] + 1, None)) is not None:
            rows.append((rows[-1][0] + 1, frame))
        self.last_seq = rows[-1][0]
        for seq, frame in rows:
            self.recent[seq] = frame
        while len(self.recent) > RECENT_LIMIT:
            del self.recent[next(iter(self.recent))]
        for seq in [s for s in held if s <= self.last_seq]:
            del held[seq]
        if not held and self.last_seq >= self.expected_upto:
            self._cancel_gap_timer()  # caught up live: nothing to read
        delivered = 0
        for socket in list(self.sockets):
            if not socket.closed:
                try:
                    delivered += await socket.push(rows)
                except Exception:  # one broken socket must not starve the others
                    logger.exception("could not hand a frame to a socket")
        if delivered:
            metrics.DELIVERIES.inc(delivered)  # once per hand-out, not once per socket

    def _expect(self, upto: int, how: str, now: bool = False) -> None:
        """Sequences up to `upto` exist: whatever of them has not arrived live within the
        grace period is read from the database, once for every socket here."""
        self.expected_upto = max(self.expected_upto, upto)
        if self.last_seq is None or self.closed:
            return
        if self.healing is not None and not self.healing.done():
            return  # the running heal reads up to expected_upto
        if self.gap_timer is not None and not now:
            return
        self._cancel_gap_timer()
        self.gap_how = how
        self.gap_timer = asyncio.get_running_loop().call_later(
            0 if now else GAP_GRACE_SECONDS, self._gap_due
        )

    def _cancel_gap_timer(self) -> None:
        if self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    def _gap_due(self) -> None:
        self.gap_timer = None
        if self.closed or self.last_seq is None:
            return
        if not self.held and self.last_seq >= self.expected_upto:
            return
        self.healing = asyncio.ensure_future(self.heal(self.gap_how))

    async def heal(self, how: str) -> int:
        """Reads what did not arrive live from the database and hands it out: one read (per
        batch) for every socket of the conversation in this process."""
        if self.last_seq is None:
            return 0
        metrics.GAPS_DETECTED.labels(how=how).inc()
        healed = 0
        try:
            while True:
                last = self.last_seq
                upto = None if how == "recovery" else self.expected_upto
                if self.held:
                    upto = min(self.held) - 1
                if upto is not None and upto <= last:
                    break
                metrics.HEAL_READS.labels(how=how).inc()
                rows = await dbcalls.db(fragments.messages_after_html)(
                    self.conversation_id, last, upto, BACKLOG_BATCH
                )
                async with self.emit_lock:
                    rows = [(s, fragments.ws_messages([h])) for s, h in rows if s > self.last_seq]
                    if rows and rows[0][0] == self.last_seq + 1:
                        healed += len(rows)
                        await self._emit(rows)
                if self.last_seq == last:
                    break  # the database has no more (see below)
        except DatabaseError:
            # Held frames wait (bounded) and the read is tried again; sockets stay open.
            logger.warning("gap heal failed; retrying", extra={"conversation": self.group})
            if not self.closed:
                self.gap_timer = asyncio.get_running_loop().call_later(
                    settings.CHAT_DB_RETRY_SECONDS, self._gap_due
                )
            return healed
        finally:
            metrics.GAP_MESSAGES_HEALED.inc(healed)
            if healed:
                logger.info(
                    "sequence gap healed from the database",
                    extra={"conversation": self.conversation_id, "healed": healed, "how": how},
                )
        # Sequences are gapless in the database, so this is only reached when something
        # outside it disagrees (a Redis that kept a newer number than this database has):
        # held frames go out as they are, and the number is not asked for again.
        async with self.emit_lock:
            if self.held and self.last_seq is not None:
                first = min(self.held)
                frame = self.held.pop(first)
                await self._emit([(first, frame)])
        if self.last_seq is not None:
            self.expected_upto = min(self.expected_upto, self.last_seq)
        return healed

    async def reset_history(self, epoch: str, newest: int) -> None:
        """The database holds another history (a restore): every socket here starts over."""
        async with self.emit_lock:
            self.epoch = epoch
            self.last_seq = self.expected_upto = newest
            self.held.clear()
            self.recent.clear()
            self._cancel_gap_timer()
            for socket in list(self.sockets):
                if not socket.closed:
                    await socket.start_over(epoch, newest)

    # --- broadcasting -----------------------------------------------------------------------

    async def publish(self, seq: int, frame: str) -> bool:
        """A message stored by a socket here: to the sockets here at once, then to the other
        processes through the layer. False if the layer has not taken it yet (it stays queued
        and goes out with the next send, the layer's recovery or the next heartbeat)."""
        await self.offer(seq, frame)
        self.unbroadcast.append(
            {
                "type": "chat.message",
                "seq": seq,
                "frame": frame,
                "conversation_id": self.conversation_id,
            }
        )
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
                if not await self.group_send(self.unbroadcast[0]):
                    return False
                self.unbroadcast.pop(0)
            return True

    async def group_send(self, event: dict) -> bool:
        try:
            await self.layer.group_send(self.group, event)
            return True
        except LAYER_ERRORS as exc:
            metrics.BROADCAST_FAILURES.inc()
            logger.warning("group_send failed", extra={"group": self.group, "error": repr(exc)})
            return False

    # --- presence ---------------------------------------------------------------------------

    def _presence_changed(self, user_id: int, online: bool) -> None:
        if not self.presence_enabled:
            return
        self.presence_pending[user_id] = online
        if self.presence_timer is None and not self.closed:
            self.presence_timer = asyncio.get_running_loop().call_later(
                settings.CHAT_PRESENCE_COALESCE_SECONDS, self._presence_due
            )

    def _presence_due(self) -> None:
        self.presence_timer = None
        if self.presence_task is not None and not self.presence_task.done():
            # One write at a time; what is pending goes with the next one.
            self.presence_task.add_done_callback(lambda _t: self._presence_changed_again())
            return
        self.presence_task = asyncio.ensure_future(self.flush_presence())

    def _presence_changed_again(self) -> None:
        if self.presence_pending and self.presence_timer is None and not self.closed:
            self._presence_due()

    async def flush_presence(self) -> None:
        """Writes the pending arrivals and departures in one round trip and broadcasts the
        users whose presence changed, in one event (none if nobody's did)."""
        pending, self.presence_pending = self.presence_pending, {}
        if not pending or not self.channel_name:
            self.presence_pending.update(pending)
            return
        joins = [uid for uid, on in pending.items() if on]
        leaves = [uid for uid, on in pending.items() if not on]
        try:
            online = await presence_store().update(
                self.conversation_id, self.channel_name, joins, leaves
            )
        except LAYER_ERRORS:
            return  # the heartbeat rewrites every local user's entry when Redis is back
        changes = await self.apply_online(online)
        if changes:
            metrics.PRESENCE_BROADCASTS.inc()
            first_uid, first_on = changes[0]
            await self.group_send(
                {
                    "type": "chat.presence",
                    "changes": changes,
                    # One user's change in the form earlier versions read (rolling upgrades).
                    "user_id": first_uid,
                    "online": first_on,
                    "frame": fragments.presence_html(
                        first_uid, self.members.get(first_uid, ""), first_on
                    ),
                }
            )

    async def apply_online(self, online: set[int]) -> list[list]:
        """Takes `online` as the conversation's online users; tells the sockets here about
        the members whose presence that changes. Returns [[user id, online], ...] changed."""
        if not self.presence_enabled:
            return []
        changes = [[uid, uid in online] for uid in (online ^ self.online) if uid in self.members]
        self.online = set(online)
        if changes:
            frame = "".join(
                fragments.presence_html(uid, self.members[uid], on) for uid, on in changes
            )
            await self.send_each(frame)
        return changes

    async def on_presence(self, event: dict) -> None:
        changes = event.get("changes") or [[event["user_id"], event["online"]]]
        online = set(self.online)
        for uid, on in changes:
            if uid in self.local_users and not on:
                continue  # still online here, whatever another process saw
            (online.add if on else online.discard)(uid)
        await self.apply_online(online)

    async def send_each(self, frame: str, but: int | None = None) -> None:
        """`frame` to every socket here (but the user `but`'s)."""
        for socket in list(self.sockets):
            if socket.user_id != but and not socket.closed:
                try:
                    await socket.send_frame(frame)
                except Exception:
                    logger.exception("could not send a frame to a socket")

    def presence_entries(self) -> list[tuple[int, str]]:
        if not self.presence_enabled:
            return []
        return [(uid, self.channel_name) for uid in self.local_users]

    # --- the layer ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._join()
        finally:
            if not self.ready.done():
                self.ready.set_result(None)
        heartbeat().add(self)
        while not self.closed:
            if not self.layer_ok:
                await self._rejoin()
                continue
            try:
                message = await self.layer.receive(self.channel_name)
            except LAYER_ERRORS as exc:
                self.layer_ok = False
                logger.warning("channel layer lost", extra={"error": repr(exc)})
                continue
            try:
                await self.dispatch(message)
            except Exception:
                logger.exception("hub could not handle a layer message")

    async def _join(self) -> bool:
        try:
            if not self.channel_name:
                self.channel_name = await self.layer.new_channel()
            await self.layer.group_add(self.group, self.channel_name)
        except LAYER_ERRORS as exc:
            logger.warning("group join failed; will retry", extra={"error": repr(exc)})
            self.layer_ok = False
            return False
        self.joined_at = time.monotonic()
        return True

    async def _rejoin(self) -> None:
        delay = 0.25
        while not self.closed:
            await asyncio.sleep(delay * (0.5 + random.random()))
            if await self._join():
                break
            delay = min(delay * 2, 5.0)
        if self.closed:
            return
        self.layer_ok = True
        logger.info("channel layer recovered")
        # Whatever was broadcast while we were not listening is in the database.
        self.beat_missed = False
        asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        try:
            await self.heal("recovery")
        except DatabaseError:
            self.beat_missed = True  # the next beat tries again
        await self.flush_broadcasts()
        self.presence_pending.update(dict.fromkeys(self.local_users, True))
        await self.flush_presence()

    async def dispatch(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "chat.message":
            if "t" in message:
                admission().note_delay(max(0.0, time.time() - message["t"]))
            await self.offer(message["seq"], message["frame"])
        elif kind == "chat.typing":
            await self.send_each(message["frame"], but=message["user_id"])
        elif kind == "chat.presence":
            await self.on_presence(message)

    # --- heartbeat ------------------------------------------------------------------------

    def position(self) -> tuple[int, str]:
        return (self.last_seq or 0, self.epoch)

    def on_heartbeat(
        self, answer: tuple[set[int], int, str | None] | None, before: tuple[int, str]
    ) -> None:
        """The process heartbeat's answer for this conversation: (online users, newest
        sequence, the database's epoch or None when the sequence is Redis' note)."""
        for socket in self.sockets:
            socket.on_beat()
        if self.closed or self.last_seq is None:
            return
        if answer is None:
            self.beat_missed = True  # pub/sub reconnects silently: read the backlog next time
            return
        if self.beat_task is not None and not self.beat_task.done():
            return  # the previous beat's work is still running (a slow heal)
        online, newest, epoch = answer
        changed = self._history_changed(newest, epoch, before)
        if not (
            changed
            or self.beat_missed
            or self.unbroadcast
            or newest > self.last_seq
            or online != self.online
            or time.monotonic() - self.joined_at > REJOIN_SECONDS
        ):
            return
        self.beat_task = asyncio.ensure_future(
            self._after_heartbeat(online, newest, epoch if changed else None)
        )

    def _history_changed(self, newest: int, epoch: str | None, before: tuple[int, str]) -> bool:
        """The database (epoch known: the answer came from it) holds another history than
        the one this hub had handed out when it was read."""
        sent, seen_epoch = before
        if epoch is None or self.epoch != seen_epoch:
            return False
        return epoch != seen_epoch or newest < sent

    async def _after_heartbeat(
        self, online: set[int], newest: int, new_history: str | None
    ) -> None:
        await self.apply_online(online | set(self.local_users))
        if new_history is not None:
            try:
                epoch = new_history
                if new_history == self.epoch:  # fewer messages than we handed out: restored
                    epoch = await dbcalls.db(services.conversation_new_epoch)(
                        conversation_id=self.conversation_id, seen_epoch=new_history
                    )
                metrics.HISTORY_RESETS.inc()
                await self.reset_history(epoch, newest)
            except DatabaseError:
                logger.warning("could not start a new epoch; will retry")
            return
        if time.monotonic() - self.joined_at > REJOIN_SECONDS and self.layer_ok:
            await self._join()
        await self.flush_broadcasts()
        if self.beat_missed:
            try:
                await self.heal("recovery")
            except DatabaseError:
                return
            self.beat_missed = False
        elif newest > (self.last_seq or 0):
            self._expect(newest, "tail")  # usually still in flight; read if not

    # --- the end --------------------------------------------------------------------------

    def abandon(self) -> None:
        """Stops at once, saying goodbye to nobody (the server is stopping): presence entries
        lapse after CHAT_PRESENCE_TTL, the group entry goes with the process."""
        if self.closed:
            return
        self.closed = True
        self.hubs.forget(self)
        heartbeat().remove(self)
        self._cancel_gap_timer()
        if self.presence_timer is not None:
            self.presence_timer.cancel()
            self.presence_timer = None
        for task in (self.healing, self.beat_task, self.presence_task, self.task):
            if task is not None and not task.done():
                task.cancel()

    async def close(self) -> None:
        if self.closed:
            return
        task = self.task
        self.task = None  # not cancelled by abandon: awaited below, after the goodbyes
        self.abandon()
        # Whoever was online through this hub is not any more.
        self.presence_pending.update(dict.fromkeys(self.presence_pending, False))
        self.presence_pending.update(dict.fromkeys(self.local_users, False))
        self.local_users.clear()
        with contextlib.suppress(*LAYER_ERRORS):
            await self.flush_presence()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.channel_name:
            with contextlib.suppress(*LAYER_ERRORS):
                await self.layer.group_discard(self.group, self.channel_name)


class Hubs:
    """This event loop's hubs, by conversation."""

    def __init__(self) -> None:
        self.hubs: dict[int, ConversationHub] = {}

    async def get(self, conversation_id: int) -> ConversationHub:
        """The conversation's hub, joined to its group (or retrying the join)."""
        hub = self.hubs.get(conversation_id)
        if hub is None:
            hub = self.hubs[conversation_id] = ConversationHub(self, conversation_id)
            metrics.CONVERSATIONS_ACTIVE.set(len(self.hubs))
        admission().start()
        hub.reserved += 1  # not closed under us while the socket reads and attaches
        try:
            await asyncio.shield(hub.ready)
        except BaseException:  # the socket went away while the hub was joining
            hub.unreserve()
            raise
        return hub

    def forget(self, hub: ConversationHub) -> None:
        if self.hubs.get(hub.conversation_id) is hub:
            del self.hubs[hub.conversation_id]
            metrics.CONVERSATIONS_ACTIVE.set(len(self.hubs))
            if not self.hubs:
                admission().stop()  # no sockets: nothing to measure the loop for


# This event loop's hubs (parley.perloop).
hubs = per_loop(lambda _loop: Hubs())
