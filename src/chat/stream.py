"""A conversation's stream of stored messages, in order: the one owner of sequence numbers
in a process (docs/delivery.md).

- `Position(seq, epoch)`: where a history is; `Row(seq, frame)`: one stored message as every
  socket is sent it (chat.positions). Frames concatenate: a batch is its rows' frames
  joined, cut by `frames()` so no websocket message passes the frame limit (autobahn
  applies CHAT_MAX_FRAME_BYTES to what the server sends too).
- `read_rows()`: the one reader of stored rows after a position, in bounded batches.
- `Order`: what a process has handed out, what arrived ahead of it, what is missing; a plain
  object with no I/O, so tests drive it step by step. `ConversationStream` runs it: holds
  broadcasts that overtook each other for a grace period, reads a gap once for every socket
  of the conversation here, and hands rows to the sockets (`deliver`).
- `SocketCursor`: what one socket has been sent, and what it does with what it is handed.
- `catch_up()`: a socket's one loop that sends what it missed, from the stream's recent rows
  or the database.
- `judge()`: the one start-over rule. Only evidence the server holds (the database, what it
  handed out or noted) starts a new epoch; a page's claim starts over that page alone.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol

from django.conf import settings
from django.db import DatabaseError
from prometheus_client import Counter

from chat import fragments, selectors
from chat.positions import Position, Row
from parley import dbcalls, metrics

logger = logging.getLogger(__name__)

BATCH = 200  # rows per database read
# A broadcast that arrives ahead of the next expected sequence is held this long for the
# missing ones: two senders' store-then-publish steps race, so under load broadcasts often
# arrive a few ms out of order, and most gaps fill by themselves.
GAP_GRACE_SECONDS = 0.1
HELD_LIMIT = BATCH  # held rows past this: read the database now
RECENT_LIMIT = BATCH  # rows kept for sockets that (re)connect a little behind
CURSOR_HOLD_LIMIT = 5 * BATCH  # rows a catching-up socket keeps; past it, it reads again


def frame_bytes(frame: str) -> int:
    """A frame's size on the wire (UTF-8), which is what the frame limit counts."""
    return len(frame) if frame.isascii() else len(frame.encode())


def frames(parts: Iterable[str], limit: int) -> list[str]:
    """`parts` (whole frames or fragments) joined in order into as few websocket messages as
    fit in `limit` bytes each. A part alone over the limit is refused at startup
    (chat.apps checks the largest message fits)."""
    out: list[str] = []
    batch: list[str] = []
    size = 0
    for part in parts:
        n = frame_bytes(part)
        if batch and size + n > limit:
            out.append("".join(batch))
            batch, size = [], 0
        batch.append(part)
        size += n
    if batch:
        out.append("".join(batch))
    return out


def rows_after(conversation_id: int, after: int, upto: int | None, limit: int) -> list[Row]:
    """Stored messages with after < seq (<= upto), oldest first, at most `limit`, as rows.
    Runs on a database thread."""
    return [
        Row(m.seq, fragments.ws_message(fragments.message_html(m)))
        for m in selectors.messages_after(conversation_id, after, upto=upto, limit=limit)
    ]


async def read_rows(
    conversation_id: int,
    after: int,
    upto: int | None = None,
    *,
    reads: Counter,
    handshake: bool = False,
) -> AsyncIterator[list[Row]]:
    """Every stored row after `after` (up to `upto`), BATCH at a time, through the database
    gate: on the handshake reader threads for a socket's catch-up, else the database thread.
    Stops when the database has no more; `reads` counts the queries. Raises DatabaseError."""
    read = dbcalls.db(rows_after, read=handshake)
    while upto is None or after < upto:
        reads.inc()
        rows = await read(conversation_id, after, upto, BATCH)
        if rows:
            yield rows
            after = rows[-1].seq
        if len(rows) < BATCH:
            return


# --- the start-over rule ------------------------------------------------------------------


class Verdict(enum.Enum):
    REPLAY = "replay"  # send what was missed
    RELOAD = "reload"  # this page alone starts over (reload); nothing shared changes
    NEW_EPOCH = "new_epoch"  # the history went back under the server: every page starts over


def went_back(db: Position, seen: int, epoch: str) -> bool:
    """The server handed out or noted `seen` in `epoch`, and the database's history is that
    epoch with fewer messages: it was restored from an older copy without a new epoch."""
    return epoch == db.epoch and seen > db.seq


def judge(db: Position, claim: Position | None, server_seen: int, cap: int) -> tuple[Verdict, str]:
    """What a connecting socket does. `claim`: the page's position (None: it gave no epoch,
    and `after` is clamped); `server_seen`: the most this server handed out or noted in the
    database's epoch. Returns the verdict and why."""
    if claim is None:
        return Verdict.REPLAY, ""
    if claim.epoch != db.epoch:
        return Verdict.RELOAD, "restored"  # the page's history is another
    if claim.seq > db.seq:
        if went_back(db, server_seen, db.epoch):
            return Verdict.NEW_EPOCH, "restored"
        return Verdict.RELOAD, "ahead"  # only the page says so
    if db.seq - claim.seq > cap:
        return Verdict.RELOAD, "behind"
    return Verdict.REPLAY, ""


# --- a socket's cursor ----------------------------------------------------------------------


class Offer(enum.Enum):
    SEND = "send"  # send the returned rows now
    HOLD = "hold"  # catching up: kept (or, past the hold limit, read later from the database)
    SKIP = "skip"  # already sent
    READ = "read"  # behind the stream: start catching up (the rows are held meanwhile)


class SocketCursor:
    """`last_sent`: the newest sequence sent to the client. `held`: rows handed over while
    catching up (None: live). Nothing is sent twice or out of order: every decision is by
    sequence number."""

    __slots__ = ("last_sent", "held", "hold_limit")

    def __init__(self, last_sent: int, hold_limit: int = CURSOR_HOLD_LIMIT) -> None:
        self.last_sent = last_sent
        self.held: list[Row] | None = []  # a new socket catches up first
        self.hold_limit = hold_limit

    @property
    def catching_up(self) -> bool:
        return self.held is not None

    def offer(self, rows: Sequence[Row]) -> tuple[Offer, list[Row]]:
        """Consecutive rows from the stream: what to do with them, and the rows to send."""
        if self.held is not None:
            if len(self.held) < self.hold_limit:
                self.held.extend(rows)  # past the limit: read again after
            return Offer.HOLD, []
        last = self.last_sent
        if rows[-1].seq <= last:
            return Offer.SKIP, []  # already sent (a catch-up read got further)
        if rows[0].seq > last + 1:
            self.held = list(rows)  # a catch-up that dropped rows: read what is missing
            return Offer.READ, []
        fresh = [row for row in rows if row.seq > last] if rows[0].seq <= last else list(rows)
        self.last_sent = fresh[-1].seq
        return Offer.SEND, fresh

    def start_catch_up(self) -> None:
        if self.held is None:
            self.held = []

    def sent(self, rows: Sequence[Row]) -> None:
        """Backlog rows (consecutive, after last_sent) were sent."""
        if rows:
            self.last_sent = rows[-1].seq

    def end_catch_up(self) -> tuple[Offer, list[Row]]:
        """The backlog is sent: SEND the held rows that follow on (the socket is live again),
        SKIP when none is newer, or READ again when some were dropped while reading."""
        held, self.held = self.held or [], None
        fresh = [row for row in held if row.seq > self.last_sent]
        if not fresh:
            return Offer.SKIP, []
        if fresh[0].seq == self.last_sent + 1:
            return self.offer(fresh)
        self.held = []
        return Offer.READ, []

    def abandon_catch_up(self) -> None:
        """The catch-up failed (the socket is being closed): back to live."""
        self.held = None

    def start_over(self, newest: int) -> None:
        """The history was replaced: go on from the database's newest message."""
        self.last_sent = newest
        self.held = None


class Receiver(Protocol):
    """What the stream needs of a socket (chat.consumers.ChatConsumer): its cursor, and
    three ways to be told something. The stream decides what is sent (the cursor) and cuts it
    under the frame limit; the socket only sends."""

    closed: bool
    cursor: SocketCursor

    async def deliver(self, messages: list[str]) -> None:
        """Sends these websocket messages, in order (each under the frame limit)."""

    def fell_behind(self) -> None:
        """Rows were handed out that do not follow on from what it sent: it catches up
        (`catch_up`) in a task of its own. Must not block."""

    async def start_over(self, position: Position, reason: str) -> None:
        """The page starts over (reload); the socket goes on from `position`."""


def frame_limit() -> int:
    return settings.CHAT_MAX_FRAME_BYTES


async def catch_up(socket: Receiver, stream: ConversationStream) -> int:
    """Sends `socket` what it has not been sent yet: from the stream's recent rows when it
    still has them all, else from the database; then what was handed to it meanwhile.
    Returns how many rows it sent. Raises DatabaseError (the caller closes the socket)."""
    cursor = socket.cursor
    cursor.start_catch_up()
    sent = 0
    while True:
        try:
            recent = stream.order.recent_after(cursor.last_sent)
            if recent is not None:
                cursor.sent(recent)
                sent += await _send(socket, recent)
            else:
                async for rows in read_rows(
                    stream.conversation_id,
                    cursor.last_sent,
                    reads=metrics.BACKLOG_READS,
                    handshake=True,
                ):
                    cursor.sent(rows)
                    sent += await _send(socket, rows)
        except BaseException:
            cursor.abandon_catch_up()
            raise
        offer, rows = cursor.end_catch_up()
        if offer is Offer.SEND:
            sent += await _send(socket, rows)
        if offer is not Offer.READ:
            return sent
        cursor.start_catch_up()  # some were dropped while reading: read again


async def _send(socket: Receiver, rows: list[Row]) -> int:
    if rows:
        metrics.DELIVERIES.inc(len(rows))
        await socket.deliver(frames((row.frame for row in rows), frame_limit()))
    return len(rows)


# --- a conversation's order ---------------------------------------------------------------


class Order:
    """What a process has handed out of one conversation (`position`, None until the first
    socket's read says where the history is), rows that arrived ahead of it (`held`), the
    newest sequence known to exist (`expected`), and the last RECENT_LIMIT rows handed out.
    No I/O: every method answers what to hand out now."""

    def __init__(self) -> None:
        self.position: Position | None = None
        self.held: dict[int, str] = {}
        self.expected = 0
        self.recent: dict[int, str] = {}

    def start(self, position: Position) -> list[Row]:
        """The history is at `position` (the first socket's read, or a restart)."""
        self.position = position
        self.expected = position.seq
        self.recent.clear()
        for seq in [s for s in self.held if s <= position.seq]:
            del self.held[seq]
        return self._follow_on([])

    def arrive(self, row: Row) -> list[Row]:
        """A stored message's row (from the layer, or stored here). Returns the rows to hand
        out now: none if it is a duplicate, or held until what precedes it arrives."""
        if self.position is None:
            # The first socket's read says where we are. Bounded: past HELD_LIMIT the oldest
            # go, and that read finds them in the database instead.
            self.held[row.seq] = row.frame
            if len(self.held) > HELD_LIMIT:
                del self.held[min(self.held)]
            return []
        if row.seq <= self.position.seq:
            return []  # handed out already (our own broadcast coming back, a duplicate)
        if row.seq > self.position.seq + 1:
            self.held[row.seq] = row.frame
            self.expected = max(self.expected, row.seq - 1)
            return []
        return self._follow_on([row])

    def expect(self, upto: int) -> None:
        """Sequences up to `upto` exist (a socket's read, the heartbeat): read if they do not
        arrive."""
        self.expected = max(self.expected, upto)

    def missing(self) -> tuple[int, int | None] | None:
        """(after, upto) of what is known to exist and has not been handed out (upto None:
        everything after), or None when nothing is."""
        if self.position is None:
            return None
        last = self.position.seq
        upto = min(self.held) - 1 if self.held else self.expected
        return (last, upto) if upto > last else None

    def fill(self, rows: Sequence[Row]) -> list[Row]:
        """Rows read from the database (consecutive, oldest first): the ones to hand out."""
        if self.position is None:
            return []
        fresh = [row for row in rows if row.seq > self.position.seq]
        if not fresh or fresh[0].seq != self.position.seq + 1:
            return []
        return self._follow_on(fresh)

    def settle(self) -> list[Row]:
        """The database has no more of what was expected: something outside it (a Redis that
        kept a newer number) disagrees. The held rows go out as they are, and nothing past
        what was handed out is expected any more."""
        if self.position is None:
            return []
        rows: list[Row] = []
        if self.held:
            first = min(self.held)
            frame = self.held.pop(first)
            self.position = Position(first - 1, self.position.epoch)
            rows = self._follow_on([Row(first, frame)])
        self.expected = min(self.expected, self.position.seq)
        return rows

    def recent_after(self, after: int) -> list[Row] | None:
        """The rows after `after` handed out here, if they are all still kept."""
        if self.position is None:
            return None
        if after >= self.position.seq:
            return []
        if after + 1 not in self.recent:
            return None
        return [Row(seq, self.recent[seq]) for seq in range(after + 1, self.position.seq + 1)]

    def _follow_on(self, rows: list[Row]) -> list[Row]:
        """`rows` (following on from position, possibly none) and the held rows that follow
        on from them: handed out now."""
        assert self.position is not None
        held = self.held
        last = rows[-1].seq if rows else self.position.seq
        while (frame := held.pop(last + 1, None)) is not None:
            last += 1
            rows.append(Row(last, frame))
        if not rows:
            return rows
        self.position = Position(last, self.position.epoch)
        recent = self.recent
        for row in rows:
            recent[row.seq] = row.frame
        while len(recent) > RECENT_LIMIT:
            del recent[next(iter(recent))]
        for seq in [s for s in held if s <= last]:
            del held[seq]
        return rows


class ConversationStream:
    """Runs a conversation's Order in this process: hands rows to every socket in
    `receivers` (the hub's registry) as they follow on, holds what overtook, and reads a gap
    from the database once for all of them."""

    def __init__(self, conversation_id: int, receivers: dict[Receiver, None]) -> None:
        self.conversation_id = conversation_id
        self.receivers = receivers
        self.order = Order()
        self.lock = asyncio.Lock()  # rows reach every socket in one order
        self.gap_timer: asyncio.TimerHandle | None = None
        self.gap_how = "live"
        self.healing: asyncio.Task | None = None
        self.closed = False

    @property
    def position(self) -> Position | None:
        return self.order.position

    async def start(self, position: Position) -> None:
        """The first socket's read: the history is at `position`."""
        async with self.lock:
            await self._hand_out(self.order.start(position))
        if self.order.held:
            self.expect(min(self.order.held) - 1, "live")

    async def arrive(self, row: Row) -> None:
        """A stored message, from the layer or from a store in this process."""
        order = self.order
        if order.position is None or row.seq <= order.position.seq:
            order.arrive(row)  # held for the first read, or a duplicate
            return
        async with self.lock:  # a heal handing out meanwhile may be about to need it
            await self._hand_out(order.arrive(row))
        if order.missing() is None:
            self._cancel_gap_timer()  # caught up live: nothing to read
        elif order.held:
            self.expect(min(order.held) - 1, "live", now=len(order.held) > HELD_LIMIT)

    def expect(self, upto: int, how: str, now: bool = False) -> None:
        """Sequences up to `upto` exist: what has not arrived within the grace period is read
        from the database, once for every socket here."""
        self.order.expect(upto)
        if self.closed or self.order.position is None:
            return
        if self.healing is not None and not self.healing.done():
            return  # the running heal reads up to what is expected
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
        if not self.closed and self.order.missing() is not None:
            self.healing = asyncio.ensure_future(self._heal_due(self.gap_how))

    async def _heal_due(self, how: str) -> None:
        try:
            await self.heal(how)
        except DatabaseError:
            return  # retried by the timer heal() set
        self.healing = None
        if self.order.missing() is not None and not self.closed:
            self.expect(self.order.expected, how)  # expected more while the heal ended

    async def heal(self, how: str) -> int:
        """Reads what did not arrive live and hands it out: one read per batch for every
        socket here. `how` "recovery" (after a layer outage): everything stored after what
        was handed out. Raises DatabaseError after arranging a retry."""
        order = self.order
        if order.position is None:
            return 0
        metrics.GAPS_DETECTED.labels(how=how).inc()
        reads = metrics.HEAL_READS.labels(how=how)
        everything = how == "recovery"
        healed = 0
        try:
            while (missing := order.missing()) is not None or everything:
                after, upto = missing or (order.position.seq, None)
                everything = False
                async for rows in read_rows(self.conversation_id, after, upto, reads=reads):
                    async with self.lock:
                        out = order.fill(rows)
                        await self._hand_out(out)
                    healed += len(out)
                if order.position.seq == after:
                    # The database has none of it (gapless, so a history that went back):
                    # settled below. Each socket reads for itself what it then lacks.
                    break
        except DatabaseError:
            # Held rows wait (bounded) and the read is tried again; sockets stay open.
            logger.warning(
                "gap heal failed; retrying", extra={"conversation": self.conversation_id}
            )
            if not self.closed:
                self._cancel_gap_timer()
                self.gap_timer = asyncio.get_running_loop().call_later(
                    settings.CHAT_DB_RETRY_SECONDS, self._gap_due
                )
            raise
        finally:
            metrics.GAP_MESSAGES_HEALED.inc(healed)
            if healed:
                logger.info(
                    "sequence gap healed from the database",
                    extra={"conversation": self.conversation_id, "healed": healed, "how": how},
                )
        async with self.lock:
            await self._hand_out(order.settle())
        return healed

    async def restart(self, position: Position, reason: str) -> None:
        """The database holds another history: every socket here starts over from it."""
        async with self.lock:
            self.order.held.clear()
            self.order.start(position)
            self._cancel_gap_timer()
            for socket in list(self.receivers):
                if not socket.closed:
                    await socket.start_over(position, reason)

    async def _hand_out(self, rows: list[Row]) -> None:
        """With the lock held: `rows` to every socket, as its cursor decides (cut once for
        all the sockets that take them whole), counted once for all of them."""
        if not rows:
            return
        delivered = 0
        whole: list[str] | None = None
        for socket in list(self.receivers):
            if socket.closed:
                continue
            offer, out = socket.cursor.offer(rows)
            if offer is Offer.READ:
                socket.fell_behind()
            if offer is not Offer.SEND:
                continue
            if out is rows or len(out) == len(rows):
                whole = whole or frames((row.frame for row in rows), frame_limit())
                messages = whole
            else:
                messages = frames((row.frame for row in out), frame_limit())
            try:
                await socket.deliver(messages)
                delivered += len(out)
            except Exception:  # one broken socket must not starve the others
                logger.exception("could not hand rows to a socket")
        if delivered:
            metrics.DELIVERIES.inc(delivered)

    def close(self) -> None:
        self.closed = True
        self._cancel_gap_timer()
        if self.healing is not None and not self.healing.done():
            self.healing.cancel()
