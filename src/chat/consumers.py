"""Websocket consumers: one per open conversation page, one per open conversation list.

Delivery contract (docs/delivery.md): every message has a per-conversation
sequence number. A consumer remembers the last sequence it sent to its client and never
sends one twice or out of order; a sequence that arrives ahead of the next expected one is a
gap (a broadcast the layer dropped) and is healed from the database before it is sent. A
client reconnects with `?after=<last sequence it rendered>` and gets the backlog first.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from urllib.parse import parse_qs

from django.conf import settings
from django.db import DatabaseError

from chat import fragments, protocol, selectors, services
from chat.delivery import Offer, SocketCursor
from chat.groups import conversation_group, user_group
from chat.hub import BACKLOG_BATCH, ConversationHub, Row, hubs
from chat.models import Conversation
from chat.ratelimit import SendLimits
from chat.sockets import (
    CLOSE_FORBIDDEN,
    CLOSE_RATE_LIMITED,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHENTICATED,
    ResilientConsumer,
)
from parley import dbcalls, metrics
from parley.admission import admission
from parley.logging import Throttled
from parley_runtime import frames

logger = logging.getLogger(__name__)
refused_at_connect = Throttled(logger, "database refused at connect")

# Frames a socket keeps from its hub while it reads its backlog; past this it reads again.
CATCH_UP_HOLD_LIMIT = 5 * BACKLOG_BATCH


_db = dbcalls.db  # bounded, and refused at once while the database is down


class ChatConsumer(ResilientConsumer):
    """`/ws/chat/<conversation_id>[?after=<seq>&epoch=<epoch>]`: one conversation, live.

    The conversation's broadcasts reach this socket through its process's hub (chat.hub),
    in order and healed; the socket's own channel listens to its user's group only (logout,
    read markers).
    """

    hub: ConversationHub | None = None
    frame_received_at: float | None = None

    async def connect(self) -> None:
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        # The hub joins the group first, then we read: a message stored in between arrives
        # live too, and the sequence check drops the second copy.
        hub = await hubs().get(self.conversation_id)
        try:
            await self._connect_to(hub, user)
        except BaseException:
            if self.hub is None:  # cancelled (the client left) or failed before attaching
                hub.unreserve()
            raise

    async def _connect_to(self, hub: ConversationHub, user) -> None:
        try:
            # The handshake's second read (the session and user were the first): at the head
            # of the line, so a storm does not throw away half-done handshakes.
            members, newest, epoch = await dbcalls.db(
                selectors.connect_info,
                slot_wait=settings.CHAT_DB_CONNECT_WAIT_SECONDS,
                read=True,
                first=True,
            )(self.conversation_id)
        except dbcalls.DatabaseUnavailable as exc:
            refused_at_connect.warning(str(exc))
            await hub.release()
            await self.close(code=CLOSE_TRY_AGAIN_LATER)  # the browser retries with backoff
            return
        except DatabaseError:
            logger.exception("database unavailable at connect")
            await hub.release()
            # Not accepted: the browser sees 1006 and retries with growing backoff.
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        if user.pk not in members:
            await hub.release()
            await self.refuse(CLOSE_FORBIDDEN, "forbidden")
            return
        self.user_id: int = user.pk
        self.username: str = user.get_username()
        self.epoch: str = epoch
        self.group = conversation_group(self.conversation_id)
        self.limits = SendLimits(settings.CHAT_RATE_LIMIT)
        self.read_seq = 0
        after = self._after_param()
        # A client claiming more than exists (or nothing) starts from the newest sequence;
        # it catches up before it goes live.
        self.cursor = SocketCursor(
            newest if after is None else min(after, newest), hold_limit=CATCH_UP_HOLD_LIMIT
        )

        await self.join_groups([user_group(self.user_id)])
        await self.accept()
        self.track()
        if hub.last_seq is not None and hub.epoch != epoch:
            await hub.reset_history(epoch, newest)  # restored since the hub last heard
        self.hub = hub
        hub.attach(self, members, newest, epoch)
        client_epoch = self._query_param("epoch")
        try:
            if client_epoch is not None and (
                client_epoch != epoch or (after is not None and after > newest)
            ):
                # The page's history is another than the database's: restored (or failed
                # over) since it loaded. It starts over instead of replaying from `after`.
                self.cursor.abandon_catch_up()
                if client_epoch == epoch:  # it saw more than exists: an unannounced restore
                    epoch = await _db(services.conversation_new_epoch)(
                        conversation_id=self.conversation_id, seen_epoch=epoch
                    )
                    metrics.HISTORY_RESETS.inc()
                    await hub.reset_history(epoch, newest)
                else:
                    metrics.HISTORY_RESETS.inc()
                    await self.start_over(epoch, newest)
            else:
                sent = await self.catch_up()
                if after is not None and after < newest:
                    metrics.REPLAYS.inc()
                    metrics.MESSAGES_REPLAYED.inc(sent)
        except DatabaseError:
            logger.exception("database unavailable during replay")
            await self.close(code=CLOSE_SERVICE_RESTART)
            return
        self.tasks.add(self.start_lifetime_timer())
        if online := hub.presence_html():
            await self.send(text_data=online)

    def _query_param(self, name: str) -> str | None:
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get(name)
        return values[0][:64] if values else None

    def _after_param(self) -> int | None:
        try:
            value = int(self._query_param("after") or "")
        except ValueError:
            return None
        return value if value >= 0 else None

    def untrack(self) -> None:
        hub = self.hub
        if hub is not None and hub.detach(self):
            hub.abandon()  # cancelled without a disconnect: the server is stopping
        super().untrack()

    async def disconnect(self, code: int) -> None:
        if self.hub is None or not self.accepted:
            return
        for task in list(self.tasks):
            task.cancel()
        await self.leave_groups()
        hub = self.hub
        hub.detach(self)
        await hub.close_if_idle()

    # --- delivery (the hub calls these) ---------------------------------------------------

    async def push(self, rows: list[Row]) -> int:
        """Consecutive sequences from the hub (chat.delivery decides what is sent). Returns
        how many were sent (the hub counts them, once for all its sockets)."""
        offer, rows = self.cursor.offer(rows)
        if offer is Offer.SEND:
            await self.send(text_data=rows[0][1] if len(rows) == 1 else "".join(f for _, f in rows))
            return len(rows)
        if offer is Offer.READ:  # behind the hub (a catch-up that dropped frames)
            task = asyncio.ensure_future(self._catch_up_or_close())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return 0

    async def send_frame(self, frame: str) -> None:
        if not self.closed:
            await self.send(text_data=frame)

    async def catch_up(self) -> int:
        """Sends what this socket has not been sent yet: from the hub's recent frames when it
        still has them all, else from the database; then what the hub handed over meanwhile.
        Returns how many it sent."""
        assert self.hub is not None
        cursor = self.cursor
        cursor.start_catch_up()
        sent = 0
        while True:
            try:
                while True:
                    recent = self.hub.recent_after(cursor.last_sent)
                    if recent is not None:
                        if recent:
                            cursor.sent(recent)
                            sent += await self._send_backlog(recent, "".join(f for _, f in recent))
                        break
                    metrics.BACKLOG_READS.inc()
                    rows = await _db(fragments.messages_after_html, read=True)(
                        self.conversation_id, cursor.last_sent, None, BACKLOG_BATCH
                    )
                    if rows:
                        cursor.sent(rows)
                        sent += await self._send_backlog(
                            rows, fragments.ws_messages(h for _, h in rows)
                        )
                    if len(rows) < BACKLOG_BATCH:
                        break
            except BaseException:
                cursor.abandon_catch_up()
                raise
            offer, rows = cursor.end_catch_up()
            if offer is Offer.SEND:  # consecutive: the hub hands them out in order
                metrics.DELIVERIES.inc(len(rows))
                await self.send(text_data="".join(f for _, f in rows))
            if offer is not Offer.READ:
                return sent
            cursor.start_catch_up()  # some were dropped while we read: read again

    async def _send_backlog(self, rows: list[Row], frame: str) -> int:
        metrics.DELIVERIES.inc(len(rows))
        await self.send(text_data=frame)
        return len(rows)

    async def _catch_up_or_close(self) -> None:
        try:
            await self.catch_up()
        except DatabaseError:
            logger.warning("catch-up failed; the client reconnects and replays")
            await self.close(code=CLOSE_SERVICE_RESTART)

    async def start_over(self, epoch: str, newest: int) -> None:
        """The database's history is not the one this page has been shown (a restore): the
        page is told to start over; the socket goes on from the database's newest message."""
        logger.warning(
            "history epoch changed; the page starts over",
            extra={
                "conversation": self.conversation_id,
                "sent": self.cursor.last_sent,
                "db": newest,
            },
        )
        self.epoch = epoch
        self.cursor.start_over(newest)
        await self.send(text_data=fragments.reset_html(epoch))

    def on_beat(self) -> None:
        if self.rejoin_needed and not self.closed:
            task = asyncio.ensure_future(self.join_groups(self.groups_wanted))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    # --- client frames --------------------------------------------------------------------

    async def websocket_receive(self, message: dict) -> None:
        # The tuned runtime's input queue stamps each frame with when it reached the
        # process (parley_runtime.websocket.InputQueue); the stock one does not.
        self.frame_received_at: float | None = frames.received_at(message)
        await super().websocket_receive(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if self.closed:
            return  # frames still in flight after our close: no work, no reply, no log line
        # Every frame counts against the flood limit before anything else looks at it
        # (binary, oversized and malformed ones included): a bound on work per socket.
        if not self.limits.frame_ok():
            logger.warning("closing socket flooding frames", extra={"user": self.user_id})
            metrics.WEBSOCKET_REFUSALS.labels(reason="rate_limit").inc()
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        try:
            frame = protocol.parse_frame(text_data, settings.CHAT_MAX_FRAME_BYTES)
        except protocol.FrameError as exc:
            await self.send_error(str(exc), exc.client_id)
            return
        if isinstance(frame, protocol.SendMessage):
            await self.receive_message(frame)
        elif isinstance(frame, protocol.Typing):
            await self.receive_typing()
        else:
            await self.receive_read(frame.seq)

    async def send_error(self, text: str, client_id: str | None = None) -> None:
        await self.send(text_data=fragments.error_html(text, client_id=client_id))

    async def refuse_send(self, reason: str, client_id: str | None) -> None:
        """Past capacity: not stored, said so at once; the page keeps it and retries."""
        metrics.MESSAGES_REFUSED.labels(reason=reason).inc()
        logger.warning(
            "send refused: past capacity",
            extra={
                "reason": reason,
                "loop_lag_s": round(admission().current_lag(), 3),
                "db_wait_s": round(dbcalls.gate.queue_delay(), 3),
            },
        )
        retry = settings.CHAT_OVERLOAD_RETRY_SECONDS * random.uniform(1.0, 1.5)
        await self.send(
            text_data=fragments.error_html(
                "The server is busy: your message was not sent yet. Retrying…",
                client_id=client_id,
                retry_after=round(retry, 1),
            )
        )

    async def receive_message(self, frame: protocol.SendMessage) -> None:
        cid = frame.cid
        try:
            body = services.normalise_body(frame.text)
        except services.MessageRejected as exc:
            await self.send_error(str(exc), cid)
            return
        if not body:
            return  # empty or whitespace-only: ignored
        if not self.limits.message_ok():
            metrics.RATE_LIMITED.inc()
            if self.limits.flooding:
                logger.warning("closing flooding socket", extra={"user": self.user_id})
                metrics.WEBSOCKET_REFUSALS.labels(reason="rate_limit").inc()
                await self.close(code=CLOSE_RATE_LIMITED)
                return
            await self.send_error(
                "You are sending messages too fast. Wait a few seconds and try again.", cid
            )
            return
        if reason := admission().refusal(self.frame_received_at):
            await self.refuse_send(reason, cid)
            return
        try:
            seq, frame, created = await dbcalls.store(
                services.message_create_and_render, services.message_store
            )(self.conversation_id, self.user_id, self.username, body, frame.client_id)
        except Conversation.DoesNotExist:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        except dbcalls.DatabaseBusy:
            await self.refuse_send("db_busy", cid)
            return
        except DatabaseError:
            logger.exception("message not stored")
            await self.send_error("Your message could not be saved. Please try again.", cid)
            return
        stored_at = time.perf_counter()
        if created:
            metrics.MESSAGES_STORED.inc()
        # To this process's sockets at once (the sender's confirmation among them), then to
        # the others through the layer. A retry of a message that was already stored is
        # broadcast again: the process that stored it may have died before its broadcast,
        # and nothing else would tell the peers (recipients drop a sequence they have).
        assert self.hub is not None
        if await self.hub.publish(seq, frame) and created:
            metrics.BROADCAST_SECONDS.observe(time.perf_counter() - stored_at)

    async def receive_typing(self) -> None:
        if not self.limits.typing_ok():
            return
        await self.group_send(
            self.group,
            {
                "type": "chat.typing",
                "user_id": self.user_id,
                "frame": fragments.typing_html(self.user_id, self.username),
            },
        )

    async def receive_read(self, seq: int) -> None:
        seq = min(seq, self.cursor.last_sent)
        if seq <= self.read_seq:
            return
        self.read_seq = seq
        try:
            await _db(services.conversation_mark_read)(
                conversation_id=self.conversation_id, user_id=self.user_id, seq=seq
            )
        except DatabaseError:
            logger.exception("read marker not stored")
            return
        await self.group_send(
            user_group(self.user_id),
            {
                "type": "inbox.read",
                "conversation_id": self.conversation_id,
                "seq": seq,
            },
        )

    async def inbox_read(self, event: dict) -> None:
        pass  # for the conversation list; a chat page ignores it

    async def inbox_joined(self, event: dict) -> None:
        pass
