"""The two websockets a page opens: a conversation (`ChatConsumer`, `/ws/chat/<id>`) and the
conversation list (`InboxConsumer`, `/ws/inbox`). Thin: parse a frame, call services or
selectors, send fragments. What they share is chat.sockets; what they are sent is decided by
chat.stream and chat.delivery. The protocol is the README's "Websocket protocol"; the
guarantees are docs/delivery.md.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from urllib.parse import parse_qs

from django.conf import settings
from django.db import DatabaseError

from chat import events, fragments, protocol, selectors, services
from chat.delivery import catch_up, resume
from chat.hub import ConversationHub, hubs
from chat.models import Conversation
from chat.ratelimit import SendLimits
from chat.sockets import (
    CLOSE_FORBIDDEN,
    CLOSE_RATE_LIMITED,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHENTICATED,
    Socket,
)
from chat.stream import Position, SocketCursor, frames
from parley import dbcalls, metrics
from parley.admission import admission
from parley.logging import Throttled
from parley_runtime.frames import received_at

logger = logging.getLogger(__name__)
refused_at_connect = Throttled(logger, "database refused at connect")
refused = Throttled(logger, "send refused: past capacity")
# The database down or going away: a line a second per kind, each send already answered.
not_stored = Throttled(logger, "not stored: the database did not answer")


def _query(scope: dict, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0][:64] if values else None


class ChatConsumer(Socket):
    """`/ws/chat/<conversation_id>[?after=<seq>&epoch=<epoch>]`: one conversation, live."""

    hub: ConversationHub | None = None
    cursor: SocketCursor

    async def websocket_connect(self, message: dict) -> None:
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        # The hub joins the group first, then we read: a message stored in between arrives
        # live too, and its sequence number drops the second copy.
        hub = await hubs().get(self.conversation_id)
        try:
            await self._connect_to(hub, user)
        except BaseException:
            if self.hub is None:  # cancelled (the client left) or failed before attaching
                hub.unreserve()
            raise

    async def _connect_to(self, hub: ConversationHub, user) -> None:
        # What this process had handed out before the read below: committed by then, so a
        # read that finds less is a history that went back (chat.stream.judge).
        before = hub.stream.position
        try:
            # The handshake's second read (the session and user were the first): at the head
            # of the line, so a storm does not throw away half-done handshakes.
            members, db = await dbcalls.db(
                selectors.connect_info,
                slot_wait=settings.CHAT_DB_CONNECT_WAIT_SECONDS,
                read=True,
                first=True,
            )(self.conversation_id)
        except DatabaseError as exc:
            refused_at_connect.warning(str(exc))
            await hub.release()
            await self.close(code=CLOSE_TRY_AGAIN_LATER)  # not accepted: the browser retries
            return
        if user.pk not in members:
            await hub.release()
            await self.refuse(CLOSE_FORBIDDEN, "forbidden")
            return
        if not await self.admit(user):
            await hub.release()
            return
        self.limits = SendLimits(settings.CHAT_RATE_LIMIT)
        self.read_seq = 0
        self.busy_until = 0.0  # the retry hint of its last refusal (monotonic): see _busy
        after = self._after()
        epoch = _query(self.scope, "epoch")
        claim = None if epoch is None else Position(db.seq if after is None else after, epoch)
        self.cursor = SocketCursor(db.seq if after is None else min(after, db.seq))
        await self.accept()
        self.track()
        self.hub = hub
        await hub.attach(self, members, db)
        try:
            await resume(self, hub, claim, db, before)
        except DatabaseError:
            logger.warning("database unavailable during replay")
            await self.close(code=CLOSE_SERVICE_RESTART)
            return
        await self.deliver(frames(hub.presence.html(), settings.CHAT_MAX_FRAME_BYTES))

    def _after(self) -> int | None:
        try:
            after = int(_query(self.scope, "after") or "")
        except ValueError:
            return None
        return after if after >= 0 else None

    async def disconnect(self, code: int) -> None:
        hub = self.hub
        if hub is not None and self.accepted:
            hub.detach(self)
            await hub.close_if_idle()

    def untrack(self) -> None:
        hub = self.hub
        if hub is not None and hub.detach(self):
            hub.abandon()  # cancelled without a disconnect: the server is stopping
        super().untrack()

    # --- what the hub and the stream call -----------------------------------------------------

    async def deliver(self, messages: list[str]) -> None:
        """Sends websocket messages the stream or the hub cut under the frame limit."""
        for message in messages:
            if self.closed:
                return
            await self.send(text_data=message)

    def fell_behind(self) -> None:
        self.spawn(self._catch_up_or_close())

    async def _catch_up_or_close(self) -> None:
        try:
            await catch_up(self, self.hub.stream)
        except DatabaseError:
            logger.warning("catch-up failed; the client reconnects and replays")
            await self.close(code=CLOSE_SERVICE_RESTART)

    async def start_over(self, position: Position, reason: str) -> None:
        """The page starts over (reloads); the socket goes on from `position`."""
        logger.info(
            "the page starts over",
            extra={"conversation": self.conversation_id, "reason": reason, "db": position.seq},
        )
        self.cursor.start_over(position.seq)
        await self.deliver([fragments.reset_html(position.epoch, reason)])

    def revoke(self) -> None:
        """No longer a participant: closed with 4403 at once."""
        if not self.closed:
            metrics.WEBSOCKET_REFUSALS.labels(reason="revoked").inc()
            self.spawn(self.close(code=CLOSE_FORBIDDEN))

    # --- client frames --------------------------------------------------------------------

    async def websocket_receive(self, message: dict) -> None:
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
            frame = protocol.parse_frame(message.get("text"), settings.CHAT_MAX_FRAME_BYTES)
        except protocol.FrameError as exc:
            await self.send_error(str(exc), exc.client_id)
            return
        if isinstance(frame, protocol.SendMessage):
            if why := self._busy(received_at(message)):
                await self.refuse_busy(why, frame.cid)
            else:
                await self.receive_message(frame)
        elif isinstance(frame, protocol.Typing):
            await self.receive_typing()
        else:
            await self.receive_read(frame.seq)

    async def send_error(
        self, text: str, client_id: str | None = None, retry_after: float | None = None
    ) -> None:
        await self.deliver(
            [fragments.error_html(text, client_id=client_id, retry_after=retry_after)]
        )

    def _busy(self, arrived: float | None) -> str | None:
        """Why this send is refused before anything else is done for it: the process is past
        capacity (parley.admission, judged once a tick), or its frame waited too long."""
        why = admission().refusal(arrived)
        if why:
            window = settings.CHAT_OVERLOAD_RETRY_SECONDS * random.uniform(1.0, 1.5)
            self.busy_until = time.monotonic() + window  # the hint: the page holds sends
        return why

    async def refuse_busy(self, why: str, client_id: str | None) -> None:
        """Past capacity: refused at the cheapest point, before the text is looked at; a
        fragment made once (fragments.busy_html), a counter, a log line a second."""
        metrics.MESSAGES_REFUSED.labels(reason=why).inc()
        refused.warning(why)
        wait = max(self.busy_until - time.monotonic(), 0.1)
        await self.deliver([fragments.busy_html(client_id, round(wait, 1))])

    async def refuse_send(self, reason: str, client_id: str | None, text: str) -> None:
        """Not stored (or not known to be): said so at once with a retry hint; the page keeps
        the text and its client_id and sends it again (stored once, by client_id)."""
        metrics.MESSAGES_REFUSED.labels(reason=reason).inc()
        logger.warning(
            "send refused",
            extra={
                "reason": reason,
                "loop_lag_s": round(admission().current_lag(), 3),
                "db_wait_s": round(dbcalls.gate.queue_delay(), 3),
            },
        )
        retry = settings.CHAT_OVERLOAD_RETRY_SECONDS * random.uniform(1.0, 1.5)
        await self.send_error(text, client_id, retry_after=round(retry, 1))

    async def receive_message(self, frame: protocol.SendMessage) -> None:
        cid = frame.cid
        try:
            body = services.normalise_body(frame.text)
        except services.MessageRejected as exc:
            await self.send_error(str(exc), cid)  # refused for good: the page gets it back
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
            await self.refuse_send(
                "rate_limit", cid, "You are sending messages too fast: it will be sent shortly."
            )
            return
        assert self.hub is not None
        try:
            stored = await services.message_send(
                hub=self.hub,
                sender_id=self.user_id,
                sender_name=self.username,
                body=body,
                client_id=frame.client_id,
            )
            if not stored.created and stored.seq <= self.cursor.last_sent and cid:
                # A resend of a message this socket is past (its page reloaded before the
                # confirmation came): the stream drops it as a duplicate, so this page alone
                # is told it is stored, without the message a second time.
                await self.deliver([fragments.confirmed_html(cid)])
        except Conversation.DoesNotExist:  # not a participant any more (or no conversation)
            await self.close(code=CLOSE_FORBIDDEN)
        except dbcalls.DatabaseBusy:
            await self.refuse_send("db_busy", cid, fragments.BUSY_TEXT)
        except DatabaseError as exc:
            # Stored or not is unknown (the reply may be what was lost): the page keeps the
            # client_id and retries, and a retry cannot store it twice.
            not_stored.warning(type(exc).__name__)
            await self.refuse_send(
                "db_error", cid, "Your message could not be saved yet. Retrying…"
            )

    async def receive_typing(self) -> None:
        if self.limits.typing_ok():
            await events.broadcast(
                events.typing(
                    conversation_id=self.conversation_id,
                    user_id=self.user_id,
                    frame=fragments.typing_html(self.user_id, self.username),
                )
            )

    async def receive_read(self, seq: int) -> None:
        seq = min(seq, self.cursor.last_sent)
        if seq <= self.read_seq:
            return
        before, self.read_seq = self.read_seq, seq
        try:
            await services.read_marker_move(
                conversation_id=self.conversation_id, user_id=self.user_id, seq=seq
            )
        except DatabaseError as exc:
            not_stored.warning(f"read marker: {type(exc).__name__}")
            self.read_seq = before  # not stored: the page's next read tries again


class InboxConsumer(Socket):
    """`/ws/inbox[?since=<epoch ms>]`: the conversation list, live. It follows the user's
    CHAT_INBOX_FOLLOW_LIMIT most recent conversations through their hubs here (one shared
    row per message for all lists); its own user's read markers and new conversations reach
    it through its user hub, and so do mentions of the user, each re-reading that one row."""

    kind = "inbox"

    async def websocket_connect(self, message: dict) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        limit = settings.CHAT_INBOX_FOLLOW_LIMIT
        try:
            ids = await dbcalls.db(selectors.recent_conversation_ids, read=True)(user.pk, limit)
        except DatabaseError:
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        if not await self.admit(user):
            return
        self.following: dict[int, None] = {}  # least recently active first
        await self.accept()
        self.track()
        for cid in reversed(ids):
            self._follow(cid)
        # Followed first, then caught up: rows that changed after the page was rendered.
        since = self._since()
        if since is not None:
            try:
                changed = await dbcalls.db(selectors.conversations_changed_since, read=True)(
                    self.user_id, since, limit
                )
            except DatabaseError:
                return
            for cid in changed:
                await self._send_own_row(cid)

    def _since(self) -> datetime.datetime | None:
        """`?since=<epoch ms>` from the page, as an aware datetime (None if absent or bad)."""
        try:
            millis = int(_query(self.scope, "since") or "")
            return datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC)
        except (ValueError, OverflowError, OSError):
            return None

    def _follow(self, conversation_id: int) -> None:
        self.following.pop(conversation_id, None)
        self.following[conversation_id] = None
        hubs().hub(conversation_id).follow(self)
        while len(self.following) > settings.CHAT_INBOX_FOLLOW_LIMIT:
            self._unfollow(next(iter(self.following)))

    def _unfollow(self, conversation_id: int) -> None:
        if self.following.pop(conversation_id, 0) is None:
            hub = hubs().hubs.get(conversation_id)
            if hub is not None and hub.unfollow(self):
                self.spawn(hub.close_if_idle())

    async def disconnect(self, code: int) -> None:
        for cid in list(getattr(self, "following", ())):
            self._unfollow(cid)

    def untrack(self) -> None:
        for cid in list(getattr(self, "following", ())):
            self.following.pop(cid, None)
            hub = hubs().hubs.get(cid)
            if hub is not None and hub.unfollow(self):
                hub.abandon()  # cancelled without a disconnect: the server is stopping
        super().untrack()

    async def _send_own_row(self, conversation_id: int) -> None:
        """The user's own row (title, unread count): one read, for this user's event only."""
        try:
            row = await dbcalls.db(selectors.conversation_row, read=True)(
                self.user_id, self.username, conversation_id
            )
        except DatabaseError:
            return
        if row is not None and not self.closed:
            await self.send(text_data=fragments.conversation_row_html(row))

    # --- what the hubs call ---------------------------------------------------------------

    async def send_row(self, conversation_id: int, frame: str) -> None:
        """A message's row, shared by every list (chat.js keeps this page's title and works
        out its unread count)."""
        if conversation_id in self.following:
            self.following.pop(conversation_id)
            self.following[conversation_id] = None  # most recently active
        await self.send(text_data=frame)

    async def unfollow(self, conversation_id: int) -> None:
        if conversation_id in self.following:
            self._unfollow(conversation_id)
            await self.send(text_data=fragments.conversation_row_gone_html(conversation_id))

    async def on_read(self, conversation_id: int, seq: int) -> None:
        await self._send_own_row(conversation_id)

    async def on_joined(self, conversation_id: int) -> None:
        self._follow(conversation_id)
        await self._send_own_row(conversation_id)

    async def on_mention(self, conversation_id: int, seq: int) -> None:
        """The user was mentioned: their own row, marked (one read, for this user only)."""
        await self._send_own_row(conversation_id)
