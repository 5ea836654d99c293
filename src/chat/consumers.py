"""Websocket consumers: one per open conversation page, one per open conversation list.

Delivery contract (see README, "Delivery semantics"): every message has a per-conversation
sequence number. A consumer remembers the last sequence it sent to its client and never
sends one twice or out of order; a sequence that arrives ahead of the next expected one is a
gap (a broadcast the layer dropped) and is healed from the database before it is sent. A
client reconnects with `?after=<last sequence it rendered>` and gets the backlog first.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import random
import time
import uuid
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from chat import dbcalls, rendering, selectors, services
from chat.heartbeat import heartbeat
from chat.models import Conversation
from chat.presence import presence_store
from parley import drain, metrics

logger = logging.getLogger(__name__)

# Close codes. The HTMX ws extension reconnects only after 1006, 1011, 1012 and 1013, so
# refusals use 4xxx codes (no retry) and anything the client should recover from uses 1012.
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_RATE_LIMITED = 4429

RATE_WINDOW_SECONDS = 10.0
TYPING_THROTTLE_SECONDS = 2.5
FRAME_RATE_FACTOR = 5  # frames of any kind per window, as a multiple of CHAT_RATE_LIMIT
BACKLOG_BATCH = 200
UNBROADCAST_LIMIT = 500
# A broadcast that arrives ahead of the next expected sequence is held this long for the
# missing ones: two senders' store-then-publish steps race, so under load broadcasts often
# arrive a few ms out of order. Reading the database at once for each of those would put a
# query per recipient on the hot path (measured: a third of daphne's time at 240 msg/s).
GAP_GRACE_SECONDS = 0.1
HELD_LIMIT = BACKLOG_BATCH  # held frames past this: read the database now

try:  # channels-redis raises redis-py errors; the in-memory layer raises none of these.
    from redis.exceptions import RedisError

    LAYER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
except ImportError:  # pragma: no cover
    LAYER_ERRORS = (OSError, asyncio.TimeoutError)


def conversation_group(conversation_id: int) -> str:
    return f"chat.{conversation_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


_db = dbcalls.db  # bounded, and refused at once while the database is down


def _wake(future: asyncio.Future, _done: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


_sockets_per_conversation: dict[int, int] = {}


def _conversation_opened(conversation_id: int) -> None:
    _sockets_per_conversation[conversation_id] = (
        _sockets_per_conversation.get(conversation_id, 0) + 1
    )
    metrics.CONVERSATIONS_ACTIVE.set(len(_sockets_per_conversation))


def _conversation_closed(conversation_id: int) -> None:
    left = _sockets_per_conversation.get(conversation_id, 1) - 1
    if left > 0:
        _sockets_per_conversation[conversation_id] = left
    else:
        _sockets_per_conversation.pop(conversation_id, None)
    metrics.CONVERSATIONS_ACTIVE.set(len(_sockets_per_conversation))


class ResilientConsumer(AsyncWebsocketConsumer):
    """A websocket consumer that outlives channel-layer outages.

    Channels ends a consumer when the layer's receive raises, which with Redis down means
    every socket is dropped and every client reconnects into the same outage. Here the
    socket stays open: the consumer stops listening, retries joining its groups with
    backoff, and on recovery dispatches `layer.recovered` so the subclass can heal.
    """

    groups_wanted: list[str]
    kind = "chat"

    @classmethod
    def as_asgi(cls, **initkwargs):
        """Channels' as_asgi, returning the consumer's coroutine instead of awaiting it in
        one more (see parley.routing)."""

        def app(scope, receive, send):
            return cls(**initkwargs)(scope, receive, send)

        app.consumer_class = cls
        app.consumer_initkwargs = initkwargs
        functools.update_wrapper(app, cls, updated=())
        return app

    async def __call__(self, scope, receive, send):  # noqa: D102 (ASGI entry)
        self.scope = scope
        self.base_send = send
        self.groups_wanted = []
        self.layer_ok = True
        self.accepted = False
        self.closed = False
        self.tasks: set[asyncio.Task | asyncio.TimerHandle] = set()  # cancelled at the end
        self.tracked = False
        self.rejoin_needed = False
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        # Channels' await_many_dispatch, with less kept per waiting socket: it waits for
        # either receive through one future instead of an asyncio.wait (two more coroutines,
        # a set, a closure and a future), and does not keep the last finished task.
        sources = (receive, self._layer_receive)
        tasks = [asyncio.ensure_future(source()) for source in sources]
        try:
            while True:
                if not (tasks[0].done() or tasks[1].done()):
                    woken = asyncio.get_running_loop().create_future()
                    wake = functools.partial(_wake, woken)
                    for task in tasks:
                        task.add_done_callback(wake)
                    try:
                        await woken
                    finally:
                        for task in tasks:
                            task.remove_done_callback(wake)
                for i in (0, 1):
                    if tasks[i].done():
                        await self.dispatch(tasks[i].result())
                        tasks[i] = asyncio.ensure_future(sources[i]())
        except StopConsumer:
            pass
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Cancelled or crashed, background work dies with the socket.
            for task in list(self.tasks):
                task.cancel()
            self.untrack()

    def track(self) -> None:
        """The socket is open and live: count it, let a drain close it, and let the process
        heartbeat re-check its session."""
        self.tracked = True
        drain.register(self)
        metrics.WEBSOCKET_CONNECTS.labels(kind=self.kind).inc()
        metrics.WEBSOCKETS_OPEN.labels(kind=self.kind).inc()
        self.session_key: str = self.scope.get("session_key") or ""
        self.auth_hash: str = self.scope["user"].get_session_auth_hash()
        heartbeat().watch(self)

    def untrack(self) -> None:
        if self.tracked:
            self.tracked = False
            drain.unregister(self)
            heartbeat().unwatch(self)
            metrics.WEBSOCKETS_OPEN.labels(kind=self.kind).dec()

    def on_session_ended(self) -> None:
        """The heartbeat found this socket's session gone (logged out, even while Redis was
        down; expired; password changed; user deactivated)."""
        if not self.closed:
            logger.info("session ended; closing socket", extra={"user": self.user_id})
            task = asyncio.ensure_future(self.close(code=CLOSE_UNAUTHENTICATED))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def dispatch(self, message: dict) -> None:
        # Channels' default dispatch hops to the DB thread before every handler
        # (aclose_old_connections). Our DB calls go through database_sync_to_async, which
        # already manages connections, so deliveries stay on the event loop.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None or message["type"].startswith("_"):
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def _layer_receive(self) -> dict:
        if self.layer_ok:
            try:
                return await self.channel_layer.receive(self.channel_name)
            except LAYER_ERRORS as exc:
                self.layer_ok = False
                logger.warning("channel layer lost", extra={"error": repr(exc)})
                return {"type": "layer.lost"}
        delay = 0.25
        while True:
            await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                for group in self.groups_wanted:
                    await self.channel_layer.group_add(group, self.channel_name)
            except LAYER_ERRORS:
                delay = min(delay * 2, 5.0)
                continue
            self.layer_ok = True
            self.rejoin_needed = False
            logger.info("channel layer recovered")
            return {"type": "layer.recovered"}

    async def join_groups(self, groups: list[str]) -> bool:
        """Joins the groups; on failure, the layer's recovery or the heartbeat retries."""
        self.groups_wanted = list(groups)
        try:
            for group in groups:
                await self.channel_layer.group_add(group, self.channel_name)
        except LAYER_ERRORS as exc:
            logger.warning("group join failed; will retry", extra={"error": repr(exc)})
            self.rejoin_needed = True
            return False
        self.rejoin_needed = False
        return True

    async def leave_groups(self) -> None:
        for group in self.groups_wanted:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except LAYER_ERRORS:
                break  # entries expire with the layer's group_expiry

    async def group_send(self, group: str, event: dict) -> bool:
        try:
            await self.channel_layer.group_send(group, event)
            return True
        except LAYER_ERRORS as exc:
            metrics.BROADCAST_FAILURES.inc()
            logger.warning("group_send failed", extra={"group": group, "error": repr(exc)})
            return False

    async def accept(self, subprotocol=None, headers=None):
        self.accepted = True
        await super().accept(subprotocol, headers)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        # Never the default code (1000): a close the client should recover from is 1012.
        if self.closed:
            return
        self.closed = True
        await super().close(code=code or CLOSE_SERVICE_RESTART, reason=reason)

    async def refuse(self, code: int, reason: str) -> None:
        """Accept, then close with a 4xxx code the browser sees (a pre-accept refusal reaches
        it as 1006, which the HTMX extension retries forever). Nothing else is sent."""
        logger.info(
            "websocket refused",
            extra={"code": code, "reason": reason, "path": self.scope.get("path")},
        )
        metrics.WEBSOCKET_REFUSALS.labels(reason=reason).inc()
        await super().accept()
        await self.close(code=code)

    async def websocket_disconnect(self, message: dict) -> None:
        try:
            await self.disconnect(message.get("code", 1006))
        finally:
            raise StopConsumer()

    async def layer_lost(self, event: dict) -> None:
        pass

    async def layer_recovered(self, event: dict) -> None:
        pass

    async def session_end(self, event: dict) -> None:
        """The user logged out over HTTP: this socket's credentials are gone."""
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def drain(self, code: int) -> None:
        await self.close(code=code)

    def start_lifetime_timer(self) -> asyncio.TimerHandle:
        """Closes with 1012 after CHAT_SOCKET_MAX_AGE (jittered): the client reconnects and
        replays. This bounds how long a group entry can outlive a crashed process. A timer,
        not a task: idle sockets are many, and a sleeping task costs far more memory."""
        delay = settings.CHAT_SOCKET_MAX_AGE * random.uniform(0.85, 1.0)
        return asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self.close(code=CLOSE_SERVICE_RESTART))
        )


class ChatConsumer(ResilientConsumer):
    """`/ws/chat/<conversation_id>[?after=<seq>]`: one conversation, live."""

    async def connect(self) -> None:
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        try:
            members, newest, epoch = await _db(selectors.connect_info)(self.conversation_id)
        except DatabaseError:
            logger.exception("database unavailable at connect")
            # Not accepted: the browser sees 1006 and retries with growing backoff.
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        if user.pk not in members:
            await self.refuse(CLOSE_FORBIDDEN, "forbidden")
            return
        self.user_id: int = user.pk
        self.username: str = user.get_username()
        self.members: dict[int, str] = members
        self.epoch: str = epoch
        self.group = conversation_group(self.conversation_id)
        # Lists, not deques: an empty deque is ~600 bytes, and idle sockets are many.
        self.recent_sends: list[float] = []
        self.recent_frames: list[float] = []
        self.unbroadcast: list[dict] = []
        self.broadcast_lock = asyncio.Lock()
        self.strikes = 0
        self.last_typing = 0.0
        self.read_seq = 0
        self.online: set[int] = set()
        self.send_lock = asyncio.Lock()
        # Reordering: frames ahead of last_sent + 1, the highest sequence known to exist,
        # and the timer that reads the database for whatever has not arrived by then.
        self.held: dict[int, str] | None = None
        self.expected_upto = 0
        self.gap_timer: asyncio.TimerHandle | None = None
        self.gap_how = "live"

        # Join first, then read the backlog: a message stored in between arrives live too,
        # and the sequence check drops the second copy.
        await self.join_groups([self.group, user_group(self.user_id)])
        await self.accept()
        self.track()
        _conversation_opened(self.conversation_id)
        after = self._after_param()
        # A client claiming more than exists (or nothing) starts from the newest sequence.
        self.last_sent = newest if after is None else min(after, newest)
        client_epoch = self._query_param("epoch")
        try:
            if client_epoch is not None and (
                client_epoch != epoch or (after is not None and after > newest)
            ):
                # The page's history is another than the database's: restored (or failed
                # over) since it loaded. It starts over instead of replaying from `after`.
                self.last_sent = after or 0
                await self.start_over(
                    epoch, newest, went_back=client_epoch == epoch and (after or 0) > newest
                )
            else:
                # Read after joining: whatever was stored meanwhile comes from here or live.
                sent = await self.send_backlog()
                if after is not None and after < newest:
                    metrics.REPLAYS.inc()
                    metrics.MESSAGES_REPLAYED.inc(sent)
        except DatabaseError:
            logger.exception("database unavailable during replay")
            await self.close(code=CLOSE_SERVICE_RESTART)
            return
        self.tasks.add(self.start_lifetime_timer())
        self.beat_missed = False
        self.beat_task: asyncio.Task | None = None
        heartbeat().add(self)
        await self._presence("join")

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
        if self.tracked:
            _conversation_closed(self.conversation_id)
            heartbeat().remove(self)
        super().untrack()

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "members") or not self.accepted:
            return
        for task in list(self.tasks):
            task.cancel()
        heartbeat().remove(self)
        await self.leave_groups()
        await self._presence("leave")

    # --- delivery -------------------------------------------------------------------------

    async def send_backlog(self, upto: int | None = None) -> int:
        """Sends stored messages after last_sent (up to `upto`), in order, then any held
        frames that follow on. Returns how many came from the database."""
        sent = 0
        async with self.send_lock:
            while True:
                rows = await _db(selectors.rendered_messages_after)(
                    self.conversation_id, self.last_sent, upto, BACKLOG_BATCH
                )
                if rows:
                    await self.send(text_data=rendering.ws_messages(html for _, html in rows))
                    self.last_sent = rows[-1][0]
                    sent += len(rows)
                    metrics.DELIVERIES.inc(len(rows))
                if len(rows) < BACKLOG_BATCH:
                    await self._send_held()
                    return sent

    async def deliver(self, seq: int, frame: str) -> None:
        if seq <= self.last_sent:
            return  # already sent (echo of our own send, replay overlap, duplicate)
        if seq > self.last_sent + 1:
            # Ahead: hold it; the missing ones are most likely still in flight.
            if self.held is None:
                self.held = {}
            self.held[seq] = frame
            self._expect(seq - 1, "live", now=len(self.held) == HELD_LIMIT + 1)
            return
        async with self.send_lock:
            if seq <= self.last_sent:
                return  # a backlog read sent it while we waited
            await self.send(text_data=frame)
            self.last_sent = seq
            metrics.DELIVERIES.inc()
            await self._send_held()

    async def _send_held(self) -> None:
        """With send_lock held: sends the held frames that now follow on, in order."""
        held = self.held
        if held:
            while (frame := held.pop(self.last_sent + 1, None)) is not None:
                await self.send(text_data=frame)
                self.last_sent += 1
                metrics.DELIVERIES.inc()
            for seq in [s for s in held if s <= self.last_sent]:
                del held[seq]
            if not held:
                self.held = None
        if self.held is None and self.last_sent >= self.expected_upto:
            self._cancel_gap_timer()  # caught up live: nothing to read

    def _expect(self, upto: int, how: str, now: bool = False) -> None:
        """Sequences up to `upto` exist: whatever of them has not arrived live within the
        grace period is read from the database."""
        self.expected_upto = max(self.expected_upto, upto)
        if self.gap_timer is not None and not now:
            return
        self._cancel_gap_timer()
        self.gap_how = how
        self.gap_timer = asyncio.get_running_loop().call_later(
            0 if now else GAP_GRACE_SECONDS, self._gap_due
        )
        self.tasks.add(self.gap_timer)

    def _cancel_gap_timer(self) -> None:
        if self.gap_timer is not None:
            self.gap_timer.cancel()
            self.tasks.discard(self.gap_timer)
            self.gap_timer = None

    def _gap_due(self) -> None:
        self.tasks.discard(self.gap_timer)
        self.gap_timer = None
        if self.closed or (self.held is None and self.last_sent >= self.expected_upto):
            return
        task = asyncio.ensure_future(self._heal_gap())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _heal_gap(self) -> None:
        """Reads what did not arrive live (a broadcast the layer dropped) from the database."""
        logger.info(
            "sequence gap; healing from the database",
            extra={
                "conversation": self.conversation_id,
                "expected": self.last_sent + 1,
                "upto": self.expected_upto,
            },
        )
        metrics.GAPS_DETECTED.labels(how=self.gap_how).inc()
        healed = 0
        try:
            while self.held or self.last_sent < self.expected_upto:
                before = self.last_sent
                missing_upto = min(self.held) - 1 if self.held else self.expected_upto
                healed += await self.send_backlog(upto=max(missing_upto, self.last_sent))
                if self.last_sent == before:
                    break  # the database has no more (see below)
        except DatabaseError:
            logger.exception("gap heal failed")
            await self.close(code=CLOSE_SERVICE_RESTART)  # client reconnects and replays
            return
        finally:
            metrics.GAP_MESSAGES_HEALED.inc(healed)
        # Sequences are gapless in the database, so this is only reached when something
        # outside it disagrees (a Redis that kept a newer number than this database has):
        # held frames go out as they are, and the number is not asked for again.
        if self.held:
            async with self.send_lock:
                self.last_sent = max(self.last_sent, min(self.held) - 1)
                await self._send_held()
        self.expected_upto = min(self.expected_upto, self.last_sent)

    async def chat_message(self, event: dict) -> None:
        await self.deliver(event["seq"], event["frame"])

    async def start_over(self, epoch: str, newest: int, went_back: bool) -> None:
        """The database's history is not the one this socket (or its page) has been shown: a
        new epoch (a restore announced by `history_new_epoch`), or, `went_back`, the same
        epoch with fewer messages than were shown (an unannounced restore: this socket starts
        the new epoch). The page is told to start over; the socket goes on from the
        database's newest message."""
        if went_back:
            epoch = await _db(services.conversation_new_epoch)(
                conversation_id=self.conversation_id, seen_epoch=epoch
            )
        logger.warning(
            "history epoch changed; the page starts over",
            extra={"conversation": self.conversation_id, "sent": self.last_sent, "db": newest},
        )
        metrics.HISTORY_RESETS.inc()
        async with self.send_lock:
            self.epoch = epoch
            self.last_sent = newest
            self.held = None
            self.expected_upto = newest
            self._cancel_gap_timer()
            await self.send(text_data=rendering.reset_html(epoch))

    async def layer_recovered(self, event: dict) -> None:
        # Whatever was broadcast while we were not listening is in the database.
        healed = await self.send_backlog()
        if healed:
            metrics.GAPS_DETECTED.labels(how="recovery").inc()
            metrics.GAP_MESSAGES_HEALED.inc(healed)
        await self.flush_broadcasts()
        await self._presence("join")

    # --- client frames --------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        if self.closed:
            return  # frames still in flight after our close: no work, no reply, no log line
        # Every frame counts against the flood limit before anything else looks at it
        # (binary, oversized and malformed ones included): a bound on work per socket.
        if not self._frame_rate_ok():
            logger.warning("closing socket flooding frames", extra={"user": self.user_id})
            metrics.WEBSOCKET_REFUSALS.labels(reason="rate_limit").inc()
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        if text_data is None:
            await self.send_error("Binary frames are not supported; send JSON text.")
            return
        if len(text_data) > settings.CHAT_MAX_FRAME_BYTES:
            await self.send_error("Frame too large.")
            return
        try:
            data = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
            await self.send_error("Malformed message: expected a JSON object.")
            return
        if not isinstance(data, dict):
            await self.send_error("Malformed message: expected a JSON object.")
            return
        kind = data.get("type", "message")
        if kind == "message":
            await self.receive_message(data)
        elif kind == "typing":
            await self.receive_typing()
        elif kind == "read":
            await self.receive_read(data)
        else:
            await self.send_error("Unknown message type.")

    async def send_error(self, text: str, client_id: str | None = None) -> None:
        await self.send(text_data=rendering.error_html(text, client_id=client_id))

    def _frame_rate_ok(self) -> bool:
        """Any frame counts (typing, read, malformed): a bound on work per socket."""
        now = time.monotonic()
        frames = self.recent_frames
        del frames[: bisect.bisect_left(frames, now - RATE_WINDOW_SECONDS)]
        frames.append(now)
        return len(frames) <= settings.CHAT_RATE_LIMIT * FRAME_RATE_FACTOR

    def _rate_ok(self) -> bool:
        now = time.monotonic()
        del self.recent_sends[: bisect.bisect_left(self.recent_sends, now - RATE_WINDOW_SECONDS)]
        if len(self.recent_sends) >= settings.CHAT_RATE_LIMIT:
            self.strikes += 1
            return False
        self.strikes = 0
        self.recent_sends.append(now)
        return True

    async def receive_message(self, data: dict) -> None:
        if "chat_message" not in data:
            await self.send_error("Malformed message: the chat_message field is missing.")
            return
        raw_client_id = data.get("client_id")
        client_id: uuid.UUID | None = None
        if raw_client_id not in (None, ""):
            try:
                client_id = uuid.UUID(str(raw_client_id))
            except ValueError:
                await self.send_error("Malformed message: client_id must be a UUID.")
                return
        cid = str(client_id) if client_id else None
        try:
            body = services.normalise_body(data["chat_message"])
        except services.MessageRejected as exc:
            await self.send_error(str(exc), cid)
            return
        if not body:
            return  # empty or whitespace-only: ignored
        if not self._rate_ok():
            metrics.RATE_LIMITED.inc()
            if self.strikes > settings.CHAT_RATE_LIMIT:
                logger.warning("closing flooding socket", extra={"user": self.user_id})
                metrics.WEBSOCKET_REFUSALS.labels(reason="rate_limit").inc()
                await self.close(code=CLOSE_RATE_LIMITED)
                return
            await self.send_error(
                "You are sending messages too fast. Wait a few seconds and try again.", cid
            )
            return
        try:
            seq, frame, created = await _db(store_and_render)(
                self.conversation_id, self.user_id, self.username, body, client_id
            )
        except Conversation.DoesNotExist:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        except DatabaseError:
            logger.exception("message not stored")
            await self.send_error("Your message could not be saved. Please try again.", cid)
            return
        stored_at = time.perf_counter()
        # Confirm to the sender straight away, whether or not the layer is up.
        await self.deliver(seq, frame)
        if created:
            metrics.MESSAGES_STORED.inc()
        # A retry of a message that was already stored is broadcast again: the process that
        # stored it may have died before its broadcast, and nothing else would tell the
        # peers (recipients drop a sequence they already have).
        event = {
            "type": "chat.message",
            "seq": seq,
            "frame": frame,
            "conversation_id": self.conversation_id,
        }
        self.unbroadcast.append(event)
        # Bounded: past this, peers still heal from the database by sequence number.
        del self.unbroadcast[:-UNBROADCAST_LIMIT]
        if await self.flush_broadcasts() and created:
            metrics.BROADCAST_SECONDS.observe(time.perf_counter() - stored_at)

    async def flush_broadcasts(self) -> bool:
        """Broadcasts our stored messages in order; those the layer refused stay queued
        until it answers again (recovery, the next heartbeat or the next send), so peers
        hear of them even when their own layer never noticed the outage (pub/sub)."""
        if not self.unbroadcast:
            return True
        async with self.broadcast_lock:  # the heartbeat and the send path both flush
            sent = None  # the other flush may have emptied the queue while we waited
            while self.unbroadcast:
                if not await self.group_send(self.group, self.unbroadcast[0]):
                    return False
                sent = self.unbroadcast.pop(0)
            if sent is not None:
                with contextlib.suppress(*LAYER_ERRORS):
                    await presence_store().note_seq(self.conversation_id, sent["seq"], self.epoch)
            return True

    async def receive_typing(self) -> None:
        now = time.monotonic()
        if now - self.last_typing < TYPING_THROTTLE_SECONDS:
            return
        self.last_typing = now
        await self.group_send(
            self.group,
            {
                "type": "chat.typing",
                "user_id": self.user_id,
                "frame": rendering.typing_html(self.user_id, self.username),
            },
        )

    async def chat_typing(self, event: dict) -> None:
        if event["user_id"] != self.user_id:
            await self.send(text_data=event["frame"])

    async def receive_read(self, data: dict) -> None:
        try:
            seq = min(int(data.get("seq")), self.last_sent)
        except (TypeError, ValueError, OverflowError):
            await self.send_error("Malformed message: seq must be an integer.")
            return
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

    # --- presence -------------------------------------------------------------------------

    async def _presence(self, op: str) -> None:
        store = presence_store()
        try:
            if op == "join":
                online = await store.join(self.conversation_id, self.user_id, self.channel_name)
            else:
                online = await store.leave(self.conversation_id, self.user_id, self.channel_name)
        except LAYER_ERRORS:
            return
        if op == "join":
            await self._show_presence(online)
            await self.group_send(
                self.group,
                {
                    "type": "chat.presence",
                    "user_id": self.user_id,
                    "online": True,
                    "frame": rendering.presence_html(self.user_id, self.username, True),
                },
            )
        elif self.user_id not in online:
            await self.group_send(
                self.group,
                {
                    "type": "chat.presence",
                    "user_id": self.user_id,
                    "online": False,
                    "frame": rendering.presence_html(self.user_id, self.username, False),
                },
            )

    async def _show_presence(self, online: set[int]) -> None:
        changed = [uid for uid in self.members if (uid in online) != (uid in self.online)]
        self.online = set(online)
        if changed and not self.closed:
            await self.send(
                text_data="".join(
                    rendering.presence_html(uid, self.members[uid], uid in online)
                    for uid in changed
                )
            )

    async def chat_presence(self, event: dict) -> None:
        online = event["online"]
        if (event["user_id"] in self.online) != online:
            self.online ^= {event["user_id"]}
            await self.send(text_data=event["frame"])

    def on_heartbeat(
        self, answer: tuple[set[int], int, str | None] | None, before: tuple[int, str]
    ) -> None:
        """The process heartbeat's answer for this socket (chat.heartbeat): wakes the socket
        only when there is something to do.

        After a beat that could not reach Redis, the next one also reads the database
        backlog: the pub/sub layer reconnects on its own and never tells its consumers what
        was published while it was away.
        """
        if self.closed:
            return
        if answer is None:
            self.beat_missed = True
            return
        online, newest, epoch = answer
        changed = self._history_changed(newest, epoch, before)
        if not (
            changed
            or self.beat_missed
            or self.rejoin_needed
            or self.unbroadcast
            or newest > self.last_sent
            or any((uid in online) != (uid in self.online) for uid in self.members)
        ):
            return
        if self.beat_task is not None and not self.beat_task.done():
            return  # the previous beat's work is still running (a slow heal)
        self.beat_task = asyncio.ensure_future(
            self._after_heartbeat(online, newest, epoch if changed else None)
        )
        self.tasks.add(self.beat_task)
        self.beat_task.add_done_callback(self.tasks.discard)

    def _history_changed(self, newest: int, epoch: str | None, before: tuple[int, str]) -> bool:
        """The database (epoch known: the answer came from it) holds another history than
        the one this socket had sent from when it was read. A socket that has started over
        since then is not judged by that answer."""
        sent, seen_epoch = before
        if epoch is None or self.epoch != seen_epoch:
            return False
        return epoch != seen_epoch or newest < sent

    async def _after_heartbeat(
        self, online: set[int], newest: int, new_history: str | None
    ) -> None:
        """`new_history`: the database's epoch, when its history is not this socket's."""
        missed = self.beat_missed
        await self._show_presence(online)
        if new_history is not None:
            try:
                await self.start_over(new_history, newest, went_back=new_history == self.epoch)
            except DatabaseError:
                logger.warning("could not start a new epoch; will retry")
            return
        if self.rejoin_needed and await self.join_groups(self.groups_wanted):
            missed = True  # not in the group until now: read what was missed
        await self.flush_broadcasts()
        if missed:
            try:
                healed = await self.send_backlog()
            except DatabaseError:
                logger.warning("recovery heal failed; will retry")
                self.beat_missed = missed
                return
            if healed:
                metrics.GAPS_DETECTED.labels(how="recovery").inc()
                metrics.GAP_MESSAGES_HEALED.inc(healed)
        elif newest > self.last_sent:
            # Usually still in flight; the grace timer reads the database if not.
            self._expect(newest, "tail")
        self.beat_missed = False


class InboxConsumer(ResilientConsumer):
    """`/ws/inbox`: the conversation list, with unread counts, updated live."""

    kind = "inbox"

    max_conversations = 200

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        self.user_id = user.pk
        self.username = user.get_username()
        try:
            ids = await _db(selectors.recent_conversation_ids)(self.user_id, self.max_conversations)
        except DatabaseError:
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        await self.join_groups([user_group(self.user_id), *map(conversation_group, ids)])
        await self.accept()
        self.track()
        self.tasks.add(self.start_lifetime_timer())
        # Joined first, then caught up: rows that changed after the page was rendered.
        since = self._since_param()
        if since is not None:
            try:
                changed = await _db(selectors.conversations_changed_since)(
                    self.user_id, since, self.max_conversations
                )
            except DatabaseError:
                return
            for cid in changed:
                await self._send_row(cid)

    def _since_param(self):
        """`?since=<epoch ms>` from the page, as an aware datetime (None if absent or bad)."""
        import datetime

        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            millis = int(query.get("since", [""])[0])
            return datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC)
        except (ValueError, OverflowError, OSError):
            return None

    async def disconnect(self, code: int) -> None:
        if not self.accepted or not hasattr(self, "user_id"):
            return
        for task in list(self.tasks):
            task.cancel()
        await self.leave_groups()

    async def _send_row(self, conversation_id: int) -> None:
        try:
            row = await _db(selectors.conversation_row)(
                self.user_id, self.username, conversation_id
            )
        except DatabaseError:
            return
        if row is not None:
            await self.send(text_data=rendering.conversation_row_html(row))

    async def chat_message(self, event: dict) -> None:
        await self._send_row(event["conversation_id"])

    async def inbox_read(self, event: dict) -> None:
        await self._send_row(event["conversation_id"])

    async def inbox_joined(self, event: dict) -> None:
        group = conversation_group(event["conversation_id"])
        if group not in self.groups_wanted:
            self.groups_wanted.append(group)
            try:
                await self.channel_layer.group_add(group, self.channel_name)
            except LAYER_ERRORS:
                self.rejoin_needed = True
        await self._send_row(event["conversation_id"])

    async def chat_typing(self, event: dict) -> None:
        pass

    async def chat_presence(self, event: dict) -> None:
        pass

    async def layer_recovered(self, event: dict) -> None:
        # Rows may have changed while we were not listening: refresh the whole list.
        ids = [int(g.split(".", 1)[1]) for g in self.groups_wanted if g.startswith("chat.")]
        for cid in reversed(ids):
            await self._send_row(cid)


def store_and_render(
    conversation_id: int, user_id: int, username: str, body: str, client_id: uuid.UUID | None
) -> tuple[int, str, bool]:
    """Runs in the DB thread: store, then render the one fragment every recipient gets.

    A connection that died with its server (say Postgres restarted) fails once; with an
    idempotency key the send is retried on a fresh connection, since a retry cannot store
    it twice.
    """
    from django.contrib.auth import get_user_model
    from django.db import OperationalError, connection

    User = get_user_model()
    sender = User(pk=user_id, **{User.USERNAME_FIELD: username})
    attempts = 2 if client_id is not None else 1
    for attempt in range(attempts):
        try:
            message, created = services.message_create(
                conversation_id=conversation_id, sender=sender, body=body, client_id=client_id
            )
            break
        except OperationalError:
            if attempt + 1 == attempts:
                raise
            logger.warning("store failed on a dead connection; retrying once")
            connection.close()
    return message.seq, rendering.ws_messages([rendering.message_html(message)]), created
