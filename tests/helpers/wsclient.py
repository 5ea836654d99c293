"""The one blocking websocket chat client for tests that talk to a real server (the native
stack, the Compose stack, a daphne started by a test).

It behaves like chat.js: it keeps every sequence it rendered and reconnects with
`?after=<last sequence>`. Frames are read by loadtest.protocol, the same reading the load
test does, so the tests and the load test agree on what a fragment says. A reader thread
records everything as it arrives; every wait is on a condition with a timeout.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable

import websocket

from loadtest.protocol import parse_frame

CLOSE_ABNORMAL = 1006  # no close frame: the connection just ended


class ChatSocket:
    def __init__(
        self,
        base_ws_url: str,
        origin: str,
        conversation_id: int,
        cookies: dict[str, str] | str,
        sslopt: dict | None = None,
    ) -> None:
        self.base = base_ws_url
        self.origin = origin
        self.conversation_id = conversation_id
        if not isinstance(cookies, str):
            cookies = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self.cookie = cookies
        self.sslopt = sslopt  # wss://: e.g. {"ca_certs": <the stack's certificate>}
        self.lock = threading.Condition()
        self.ws: websocket.WebSocket | None = None
        self.reader: threading.Thread | None = None
        self.frames: list[str] = []  # every text frame, in order
        self.seqs: list[int] = []  # every sequence received, duplicates included
        self.seen: dict[int, str | None] = {}  # seq -> client_id, live and replayed alike
        self.closes: list[int | None] = []  # how each connection ended (None: no close frame)
        self.close_code: int | None = None  # the current connection's, once it ended
        self.connects = 0
        self.request_id: str | None = None

    # --- connection ------------------------------------------------------------------------
    def connect(
        self,
        after: int | None = None,
        timeout: float = 10.0,
        retry: bool = False,
        epoch: str | None = None,
    ) -> ChatSocket:
        """Opens the socket (`?after=`, `&epoch=` when given). retry=True: a refused
        handshake is tried again until `timeout` (during a restart nginx may briefly have no
        ws process)."""
        query = [f"after={after}"] if after is not None else []
        query += [f"epoch={epoch}"] if epoch is not None else []
        path = f"/ws/chat/{self.conversation_id}" + ("?" + "&".join(query) if query else "")
        deadline = time.monotonic() + timeout
        while True:
            try:
                ws = websocket.create_connection(
                    self.base + path,
                    cookie=self.cookie,
                    origin=self.origin,
                    timeout=min(timeout, 10),
                    sslopt=self.sslopt,
                )
                break
            except (OSError, websocket.WebSocketException) as exc:
                if not retry:
                    raise  # the refusal itself is what a caller may be testing (403, TLS)
                if time.monotonic() >= deadline:
                    raise AssertionError(f"could not connect to {path}: {exc!r}") from exc
                time.sleep(0.3)
        ws.settimeout(None)
        with self.lock:
            self.ws = ws
            self.close_code = None
            self.connects += 1
            self.request_id = (ws.getheaders() or {}).get("x-request-id")
        self.reader = threading.Thread(target=self._read, args=(ws,), daemon=True)
        self.reader.start()
        return self

    def reconnect(self, timeout: float = 10.0, retry: bool = False) -> ChatSocket:
        """What chat.js does after 1006/1012: connect again, replaying from the last
        sequence it has."""
        self.close()
        return self.connect(after=self.last_seq, timeout=timeout, retry=retry)

    def _read(self, ws: websocket.WebSocket) -> None:
        code: int | None = CLOSE_ABNORMAL
        try:
            while True:
                opcode, frame = ws.recv_data_frame(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else 1005
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    text = frame.data.decode("utf-8")
                    deliveries = parse_frame(text).deliveries
                    with self.lock:
                        self.frames.append(text)
                        for d in deliveries:
                            self.seqs.append(d.seq)
                            self.seen[d.seq] = d.client_id
                        self.lock.notify_all()
        except (OSError, websocket.WebSocketException):
            pass  # dropped without a close frame
        finally:
            ws.close()
            with self.lock:
                if self.ws is ws:
                    self.ws = None
                    self.close_code = code
                self.closes.append(None if code == CLOSE_ABNORMAL else code)
                self.lock.notify_all()

    @property
    def is_open(self) -> bool:
        with self.lock:
            return self.ws is not None

    def close(self) -> None:
        with self.lock:
            ws = self.ws
        if ws is not None:
            try:
                ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                ws.shutdown()  # already gone is fine
        if self.reader is not None:
            self.reader.join(timeout=10)

    # --- messages --------------------------------------------------------------------------
    def send(self, text: str, client_id: str | None = None) -> str:
        """Sends what the HTMX extension sends for the chat form; returns the client_id."""
        client_id = client_id or str(uuid.uuid4())
        with self.lock:
            ws = self.ws
        if ws is None:
            raise ConnectionError("not connected")
        ws.send(
            json.dumps(
                {"chat_message": text, "client_id": client_id, "HEADERS": {"HX-Request": "true"}}
            )
        )
        return client_id

    @property
    def last_seq(self) -> int:
        with self.lock:
            return max(self.seen, default=0)

    def client_ids(self) -> set[str]:
        with self.lock:
            return {c for c in self.seen.values() if c}

    # --- waiting ---------------------------------------------------------------------------
    def wait_for(
        self,
        predicate: Callable[[ChatSocket], object],
        timeout: float = 10.0,
        what: str = "condition",
        fail_on_close: bool = True,
    ) -> None:
        """Waits until predicate(self) holds. fail_on_close: a connection that ends meanwhile
        fails the wait at once (off where another thread reconnects)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate(self):
                if fail_on_close and self.close_code is not None:
                    raise AssertionError(f"socket closed ({self.close_code}) waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:g}s waiting for {what}; "
                        f"last seqs {self.seqs[-5:]}, closes {self.closes}"
                    )
                self.lock.wait(left)

    def wait_seq(self, seq: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda s: max(s.seen, default=0) >= seq, timeout, f"sequence {seq}")

    def wait_text(self, needle: str, timeout: float = 10.0) -> None:
        self.wait_for(lambda s: any(needle in f for f in s.frames), timeout, repr(needle))

    def wait_client_ids(self, client_ids: set[str], timeout: float = 15.0) -> None:
        """Every one of these messages seen (across reconnects)."""
        self.wait_for(
            lambda s: client_ids <= set(s.seen.values()),
            timeout,
            f"{len(client_ids)} messages",
            fail_on_close=False,
        )

    def quiet(self, seconds: float) -> None:
        """Lets `seconds` pass while frames are recorded (to show that nothing more came)."""
        deadline = time.monotonic() + seconds
        with self.lock:
            while (left := deadline - time.monotonic()) > 0 and self.close_code is None:
                self.lock.wait(left)

    def wait_close(self, timeout: float = 15.0) -> int:
        """Waits (keeping messages) until the connection ends; returns its close code."""
        self.wait_for(lambda s: s.close_code is not None, timeout, "the socket to close", False)
        assert self.close_code is not None
        return self.close_code

    def wait_closed(self, timeout: float) -> None:
        self.wait_for(lambda s: s.ws is None, timeout, "the socket to close", False)
