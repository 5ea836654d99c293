"""A Locust user that chats like a browser on the conversation page.

It logs in over HTTP (CSRF token and session cookie) in its login slot, retrying when the
server is busy, opens `/ws/chat/<conversation>` with the session cookie and an `Origin`
header, waits until its whole room is online (less the members that gave up), then sends at
the configured rate, exactly as htmx-ext-ws sends the chat form. A greenlet reads every
frame and records every delivery in the ledger. A user that cannot log in or connect gives
up: it is reported by name and the others go on without it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import gevent
import websocket
from gevent.event import Event
from locust import HttpUser, task
from locust.exception import StopUser

from loadtest import protocol
from loadtest.coordinator import coordinator
from loadtest.pacing import (
    CONNECT_ATTEMPTS,
    LOGIN_ATTEMPTS,
    RETRY_STATUSES,
    parse_retry_after,
    retry_delay,
)

logger = logging.getLogger("loadtest")

CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
RECONNECT_CODES = {1006, 1011, 1012, 1013}  # what htmx-ext-ws retries
RECONNECT_ATTEMPTS = 8  # about 20 s of backoff
HTTP_TIMEOUT = 30.0
CONNECT_TIMEOUT = 30.0  # the first handshake's retries, in all


class Refused(Exception):
    """One login or handshake attempt failed. `retry`: worth trying again (the server is
    busy or was not reached), after `retry_after` seconds if it said so."""

    def __init__(self, why: str, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry = retry
        self.retry_after = retry_after


class ChatUser(HttpUser):
    """One seeded member of one room (see coordinator.select_users)."""

    retired = False

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
        self.connect_error: Exception | None = None
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

        knobs = coordinator.knobs
        why = self.retrying(
            "login",
            lambda: self.paced_login_once(record["password"]),
            LOGIN_ATTEMPTS,
            knobs.login_timeout,
        ) or self.retrying("websocket", self.first_connect, CONNECT_ATTEMPTS, CONNECT_TIMEOUT)
        if why:
            coordinator.gave_up(self.username, self.room, why)
            self.retire()
            return
        # A recipient from here on: it expects every message sent into its room.
        coordinator.ledger.add_recipient(self.username, self.room)
        self.reader = gevent.spawn(self.receive_loop)
        if not self.wait_room_online(knobs.ready_timeout):
            logger.error(
                "%s: room %d not fully online after %gs (%d of %d)",
                self.username,
                self.room,
                knobs.ready_timeout,
                len(self.online),
                coordinator.room_target(self.room, self.room_size),
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
        # The room's rate is spread over the members that connected.
        self.interval = coordinator.room_target(self.room, self.room_size) / knobs.send_rate
        self.next_send = time.monotonic() + random.uniform(0, self.interval)

    def retire(self) -> None:
        """This user takes no further part: its first task stops it. (StopUser raised in
        on_start would work too, but Locust logs it with a traceback.)"""
        self.retired = True
        self.next_send = 0.0

    def wait_time(self) -> float:
        return max(0.0, self.next_send - time.monotonic())

    def wait_room_online(self, timeout: float) -> bool:
        """Until as many of the room's members are online as will ever be (members that
        gave up are not waited for); False after `timeout`."""
        deadline = time.monotonic() + timeout
        while len(self.online) < coordinator.room_target(self.room, self.room_size):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Presence wakes this; a member giving up does not, hence the bounded wait.
            self.room_online.wait(min(remaining, 0.5))
            self.room_online.clear()
        return True

    # --- retries --------------------------------------------------------------------------

    def retrying(
        self, what: str, attempt_once: Callable[[], None], attempts: int, budget: float
    ) -> str | None:
        """Runs `attempt_once` until it succeeds (None), or returns why it gave up: a refusal
        not worth retrying, `attempts` tries, or no time left of `budget` seconds (counted
        from the first refusal) for the next wait; the server's Retry-After is honoured,
        never cut short."""
        started: float | None = None
        for attempt in range(1, attempts + 1):
            try:
                attempt_once()
                return None
            except Refused as refused:
                if not refused.retry:
                    return f"{what} refused: {refused}"
                if started is None:
                    started = time.monotonic()
                wait = retry_delay(attempt, refused.retry_after)
                elapsed = time.monotonic() - started
                if attempt == attempts or elapsed + wait > budget:
                    return (
                        f"{what} failed {attempt} times over {elapsed:.0f} s, last: {refused}"
                        + ("" if attempt == attempts else f" (next try not before {wait:.0f} s)")
                    )
                logger.info("%s: %s: %s; retrying in %.1f s", self.username, what, refused, wait)
                gevent.sleep(wait)
        raise AssertionError("unreachable")

    # --- HTTP login -----------------------------------------------------------------------

    def paced_login_once(self, password: str) -> None:
        """One login attempt when the coordinator's pacing allows (coordinator.login_ticket)."""
        coordinator.login_ticket()
        try:
            self.login_once(password)
        finally:
            coordinator.login_done()

    def login_once(self, password: str) -> None:
        """GET the form (CSRF cookie and field), POST it; raises Refused. Busy answers (429
        from nginx's login limit, 502-504 from a proxy or a server shedding load) and no
        answer at all are worth retrying; anything else is not (a wrong password is the
        login form again, HTTP 200)."""
        base = coordinator.knobs.login_host.rstrip("/") or self.origin
        with self.client.get(
            f"{base}/accounts/login/",
            name="login page",
            timeout=HTTP_TIMEOUT,
            catch_response=True,
        ) as page:
            if page.status_code != 200:
                raise self.refused(page, "GET /accounts/login/")
            match = CSRF_RE.search(page.text)
            if not match:
                page.failure(f"{self.username}: no CSRF token on the login page")
                raise Refused("no CSRF token on the login page", retry=False)
        with self.client.post(
            f"{base}/accounts/login/",
            data={
                "username": self.username,
                "password": password,
                "csrfmiddlewaretoken": match[1],
            },
            headers={"Origin": base, "Referer": f"{base}/accounts/login/"},
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
            name="login",
            catch_response=True,
        ) as response:
            if response.status_code == 302 and "sessionid" in self.client.cookies:
                return
            if response.status_code == 200:
                response.failure(f"login of {self.username}: the form again")
                raise Refused(
                    "HTTP 200, the login form again (wrong username or password?)", retry=False
                )
            raise self.refused(response, "POST /accounts/login/")

    def refused(self, response: Any, request: str) -> Refused:
        """Marks a failed HTTP attempt as a failure in Locust's statistics (retried or
        not, the server said no) and says whether to retry."""
        status = response.status_code
        why = (f"HTTP {status}" if status else f"no answer ({response.error})") + f" to {request}"
        retry = status in RETRY_STATUSES or not status
        response.failure(f"{self.username}: {why}" + (" (retried)" if retry else ""))
        return Refused(
            why,
            retry=retry,
            retry_after=parse_retry_after(response.headers.get("Retry-After")) if status else None,
        )

    # --- websocket ------------------------------------------------------------------------

    def first_connect(self) -> None:
        """The first handshake; raises Refused. A 4xx answer other than 429 is final (the
        session was not accepted); anything else is retried."""
        if self.connect(after=None):
            return
        exc = self.connect_error
        status = getattr(exc, "status_code", None)
        headers = getattr(exc, "resp_headers", None) or {}
        retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
        raise Refused(
            f"HTTP {status}" if status else repr(exc),
            retry=not status or status == 429 or status >= 500,
            retry_after=parse_retry_after(retry_after),
        )

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
            self.connect_error = exc
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
                if self.stopping:
                    return  # the run ended during the reconnects
                coordinator.ledger.closed.append(self.username)
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
                coordinator.ledger.server_errors.append(text_)
                self.fire("server error", None, RuntimeError(text_))
        for client_id in frame.refusals:
            # Past capacity: not stored, said at once. Counted, not expected anywhere.
            message_id = protocol.client_id_hex(client_id)
            started = self.pending.pop(message_id, None) if message_id else None
            if started is not None:
                coordinator.ledger.record_refused(message_id)
                self.fire("send", started, RuntimeError("refused: server busy"))
        for user_id, online in frame.presence:
            if online:
                self.online.add(user_id)
            else:
                self.online.discard(user_id)
        if frame.presence:
            self.room_online.set()  # wakes wait_room_online to count again

    # --- sending --------------------------------------------------------------------------

    @task
    def send_message(self) -> None:
        if self.retired:
            raise StopUser()
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
