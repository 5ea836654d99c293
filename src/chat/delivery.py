"""Delivering a conversation's stream in one process (chat.stream is its synchronous core):
`ConversationStream` hands rows to every socket of the conversation here as their cursors
decide, holds what overtook for a grace period, and reads a gap once for all of them;
`read_rows` is the one reader of stored rows after a position; `resume` decides whether a
connecting socket replays or starts over, and `catch_up` is a socket's one loop that sends
what it missed. docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from django.conf import settings
from django.db import DatabaseError
from prometheus_client import Counter

from chat import fragments, presence, selectors
from chat.positions import Position, Row
from chat.stream import (
    BATCH,
    HELD_LIMIT,
    Offer,
    Order,
    SocketCursor,
    Verdict,
    frames,
    judge,
)
from parley import dbcalls, metrics

logger = logging.getLogger(__name__)

# A broadcast that arrives ahead of the next expected sequence is held this long for the
# missing ones: two senders' store-then-publish steps race, so under load broadcasts often
# arrive a few ms out of order, and most gaps fill by themselves.
GAP_GRACE_SECONDS = 0.1


def rows_after(conversation_id: int, after: int, upto: int | None, limit: int) -> list[Row]:
    """Stored messages with after < seq (<= upto), oldest first, at most `limit`, as rows.
    Runs on a database thread."""
    return [
        Row(m.seq, fragments.ws_message(fragments.entry_html(m)))
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


class Resumable(Protocol):
    """What `resume` needs of a conversation's hub (chat.hub.ConversationHub)."""

    conversation_id: int
    stream: ConversationStream

    async def restart(self, db: Position, reason: str) -> None: ...


async def resume(
    socket: Receiver,
    hub: Resumable,
    claim: Position | None,
    db: Position,
    before: Position | None,
) -> None:
    """A connecting socket, attached: replays what its page missed, or has it start over
    (chat.stream.judge). `claim`: where the page says it is (None without an epoch: then
    `after` was clamped); `db`: the connect's read; `before`: what this process had handed
    out before that read. Raises DatabaseError."""
    seen = 0
    if claim is not None and claim.epoch == db.epoch and claim.seq > db.seq:
        # The page says it saw more than the database holds: believed only if this server
        # handed out or noted more, before a read of the database that finds less.
        noted = await presence.noted_seq(hub.conversation_id, db.epoch)
        db = await dbcalls.db(selectors.conversation_position, read=True)(hub.conversation_id)
        handed = before.seq if before is not None and before.epoch == db.epoch else 0
        seen = max(noted, handed)
    cap = settings.CHAT_CATCH_UP_MAX_MESSAGES
    verdict, reason = judge(db, claim, seen, cap)
    behind = db.seq - socket.cursor.last_sent
    if verdict is Verdict.REPLAY and behind > cap:
        verdict, reason = Verdict.RELOAD, "behind"  # no epoch given: clamped, then capped
    if verdict is Verdict.NEW_EPOCH:
        await hub.restart(db, reason)  # every socket here starts over, this one too
    elif verdict is Verdict.RELOAD:
        metrics.PAGE_RELOADS.labels(reason=reason).inc()
        await socket.start_over(db, reason)
    else:
        sent = await catch_up(socket, hub.stream)
        if behind > 0:
            metrics.REPLAYS.inc()
            metrics.MESSAGES_REPLAYED.inc(sent)


async def _send(socket: Receiver, rows: list[Row]) -> int:
    if rows:
        metrics.DELIVERIES.inc(len(rows))
        await socket.deliver(frames((row.frame for row in rows), frame_limit()))
    return len(rows)


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
