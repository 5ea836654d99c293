"""A Locust user that chats like a browser on the conversation page.

It logs in over HTTP (CSRF token and session cookie), opens `/ws/chat/<conversation>` with
the session cookie and an `Origin` header, waits until its whole room is online, then sends
at the configured rate, exactly as htmx-ext-ws sends the chat form. A greenlet reads every
frame and records every delivery in the ledger.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import struct
import time
from urllib.parse import urlsplit

import gevent
import websocket
from gevent.event import Event
from locust import HttpUser, task
from locust.exception import StopUser

from loadtest import protocol
from loadtest.coordinator import coordinator

logger = logging.getLogger("loadtest")

CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
RECONNECT_CODES = {1006, 1011, 1012, 1013}  # what htmx-ext-ws retries
LOGIN_ATTEMPTS = 8
RECONNECT_ATTEMPTS = 8  # about 20 s of backoff


class ChatUser(HttpUser):
    """One seeded member of one room (see coordinator.select_users)."""

    def on_start(self) -> None:
        record = coordinator.claim()
        if record is None:
            logger.error(
                "more Locust users than seeded users (%d): this one stays idle",
                coordinator.expected_users or 0,
            )
            raise StopUser()
        self.username: str = record["username"]
        self.room: int = int(record["conversation"])
        self.room_size: int = int(record["room_size"])
        self.ws: websocket.WebSocket | None = None
        self.high_seq = 0
        self.pending: dict[str, float] = {}  # message id -> perf_counter at send
        self.online: set[int] = set()
        self.room_online = Event()
        self.open = Event()
        self.stopping = False
        self.reader: gevent.Greenlet | None = None
        parts = urlsplit(self.host)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        ws_scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_base = f"{ws_scheme}://{parts.netloc}{parts.path.rstrip('/')}"

        self.login(record["password"])
        coordinator.ledger.add_recipient(self.username, self.room)
        if not self.connect(after=None):
            raise StopUser()
        self.reader = gevent.spawn(self.receive_loop)
        knobs = coordinator.knobs
        if not self.room_online.wait(knobs.ready_timeout):
            logger.error(
                "%s: room %d not fully online after %gs (%d of %d)",
                self.username,
                self.room,
                knobs.ready_timeout,
                len(self.online),
                self.room_size,
            )
            coordinator.ledger.barrier_timeouts.append(self.username)
        if not coordinator.ready():
            logger.error(
                "%s: not every user was online after %gs; sending anyway",
                self.username,
                knobs.ready_timeout,
            )
            if self.username not in coordinator.ledger.barrier_timeouts:
                coordinator.ledger.barrier_timeouts.append(self.username)
        self.interval = self.room_size / knobs.send_rate
        self.next_send = time.monotonic() + random.uniform(0, self.interval)

    def wait_time(self) -> float:
        return max(0.0, self.next_send - time.monotonic())

    # --- HTTP login -----------------------------------------------------------------------

    def login(self, password: str) -> None:
        """GET the form (CSRF cookie and field), POST it. nginx limits login POSTs per client
        address (429); like a person, retry after a pause."""
        base = coordinator.knobs.login_host.rstrip("/") or self.origin
        for attempt in range(LOGIN_ATTEMPTS):
            page = self.client.get(f"{base}/accounts/login/", name="login page")
            match = CSRF_RE.search(page.text)
            if not match:
                raise StopUser(
                    f"{self.username}: no CSRF token on the login page ({page.status_code})"
                )
            with self.client.post(
                f"{base}/accounts/login/",
                data={
                    "username": self.username,
                    "password": password,
                    "csrfmiddlewaretoken": match[1],
                },
                headers={"Origin": base, "Referer": f"{base}/accounts/login/"},
                allow_redirects=False,
                name="login",
                catch_response=True,
            ) as response:
                if response.status_code == 302 and "sessionid" in self.client.cookies:
                    return
                if response.status_code == 429 and attempt + 1 < LOGIN_ATTEMPTS:
                    response.success()  # the limiter doing its job, not a failure
                    gevent.sleep(min(2.0 * 2**attempt, 30.0) * random.uniform(0.5, 1.0))
                    continue
                why = response.error or f"HTTP {response.status_code}"
                response.failure(f"login failed for {self.username}: {why}")
                raise StopUser()

    # --- websocket ------------------------------------------------------------------------

    def connect(self, after: int | None) -> bool:
        url = f"{self.ws_base}/ws/chat/{self.room}"
        if after is not None:
            url += f"?after={after}"
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.client.cookies)
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                url,
                cookie=cookie,
                origin=self.origin,
                timeout=30,
                enable_multithread=True,
                skip_utf8_validation=True,
            )
        except Exception as exc:
            self.fire("connect", started, exc)
            return False
        ws.settimeout(None)
        self.ws = ws
        self.fire("connect", started)
        self.open.set()
        return True

    def fire(
        self,
        name: str,
        started: float | None,
        exc: Exception | None = None,
        response_time: float | None = None,
        length: int = 0,
    ) -> None:
        if response_time is None:
            response_time = (time.perf_counter() - started) * 1000 if started else 0.0
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exc,
            context={"user": self.username},
        )

    def receive_loop(self) -> None:
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except (websocket.WebSocketException, OSError) as exc:
                opcode, data = websocket.ABNF.OPCODE_CLOSE, b""
                if not self.stopping:
                    logger.warning("%s: socket error %r", self.username, exc)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self.handle(data.decode(), time.time_ns())
                continue
            if opcode != websocket.ABNF.OPCODE_CLOSE:
                continue
            if self.stopping:
                return
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1006
            self.open.clear()
            if code not in RECONNECT_CODES or not self.reconnect():
                self.fire("closed", None, RuntimeError(f"socket closed with {code}"))
                return

    def reconnect(self) -> bool:
        """Like the browser: reconnect with backoff, replaying everything after the last
        message received."""
        coordinator.ledger.reconnects += 1
        for attempt in range(RECONNECT_ATTEMPTS):
            gevent.sleep(min(0.25 * 2**attempt, 5.0) * random.uniform(0.5, 1.0))
            if self.stopping:
                return False
            if self.connect(after=self.high_seq):
                return True
        return False

    def handle(self, text: str, recv_ns: int) -> None:
        frame = protocol.parse_frame(text)
        for delivery in frame.deliveries:
            self.high_seq = max(self.high_seq, delivery.seq)
            coordinator.ledger.record_delivery(
                self.username, delivery.message_id, delivery.seq, recv_ns
            )
            coordinator.note_delivery()
            if delivery.message_id is None:
                continue
            started = self.pending.pop(delivery.message_id, None)
            if started is not None:
                self.fire("send", started, length=len(delivery.body))
            elif delivery.sent_ns is not None:
                self.fire(
                    "fanout",
                    None,
                    response_time=(recv_ns - delivery.sent_ns) / 1e6,
                    length=len(delivery.body),
                )
        for client_id, text_ in frame.errors:
            message_id = protocol.client_id_hex(client_id)
            started = self.pending.pop(message_id, None) if message_id else None
            if started is not None:
                coordinator.ledger.record_rejected(message_id, text_)
                self.fire("send", started, RuntimeError(f"rejected: {text_}"))
            else:
                self.fire("server error", None, RuntimeError(text_))
        for user_id, online in frame.presence:
            if online:
                self.online.add(user_id)
            else:
                self.online.discard(user_id)
        if len(self.online) >= self.room_size:
            self.room_online.set()

    # --- sending --------------------------------------------------------------------------

    @task
    def send_message(self) -> None:
        # Locust runs the first task straight after on_start: keep to the schedule (each
        # member has a random phase), or every user would send at the same instant.
        early = self.next_send - time.monotonic()
        if early > 0:
            gevent.sleep(early)
        if not coordinator.sending.is_set() or not self.open.wait(10):
            self.next_send = time.monotonic() + self.interval
            return
        # A fixed schedule (open model): a slow server does not lower the offered rate,
        # unless this process falls a whole interval behind.
        self.next_send = max(self.next_send + self.interval, time.monotonic())
        message_id, body, sent_ns = protocol.new_message()
        coordinator.ledger.record_sent(message_id, self.room, self.username, sent_ns)
        self.pending[message_id] = time.perf_counter()
        try:
            self.ws.send(protocol.send_payload(body, message_id, self.room))
        except (websocket.WebSocketException, OSError) as exc:
            # Never reached the server: not a delivery anyone should expect.
            coordinator.ledger.sent.pop(message_id, None)
            self.fire("send", self.pending.pop(message_id), exc)

    def on_stop(self) -> None:
        self.stopping = True
        if getattr(self, "ws", None) is not None:
            with contextlib.suppress(websocket.WebSocketException, OSError):
                self.ws.close(timeout=1)
        if getattr(self, "reader", None) is not None:
            self.reader.kill(block=False)
