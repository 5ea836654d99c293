"""A blocking websocket chat client for the container tests (websocket-client + a reader
thread): records every message fragment it is sent and how its sockets closed, and can
reconnect with ?after=<last seq> the way the HTMX client does."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import websocket

ARTICLE_RE = re.compile(
    r'<article id="msg-\d+" class="msg" data-seq="(\d+)"[^>]*data-client-id="([^"]*)"'
)


class ChatClient:
    def __init__(self, base_ws: str, origin: str, cookie: str, conversation_id: int) -> None:
        self.url = f"{base_ws}/ws/chat/{conversation_id}"
        self.origin = origin
        self.cookie = cookie
        self.lock = threading.Condition()
        self.seen: dict[int, str] = {}  # seq -> client_id, live and replayed alike
        self.closes: list[int | None] = []
        self.connects = 0
        self.ws: websocket.WebSocket | None = None
        self.reader: threading.Thread | None = None

    # --- connection ------------------------------------------------------------------------
    def connect(self, timeout: float = 20.0) -> None:
        """Connects (replaying from the last seq seen), retrying refused handshakes until
        `timeout`: during a restart nginx may briefly have no ws replica to offer."""
        deadline = time.monotonic() + timeout
        while True:
            after = self.last_seq()
            url = self.url + (f"?after={after}" if after else "")
            try:
                ws = websocket.create_connection(
                    url,
                    timeout=10,
                    origin=self.origin,
                    cookie=self.cookie,
                )
                break
            except (OSError, websocket.WebSocketException) as exc:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"could not connect to {url}: {exc!r}") from exc
                time.sleep(0.3)
        ws.settimeout(None)
        with self.lock:
            self.ws = ws
            self.connects += 1
        self.reader = threading.Thread(target=self._read, args=(ws,), daemon=True)
        self.reader.start()

    def _read(self, ws: websocket.WebSocket) -> None:
        code: int | None = None
        try:
            while True:
                opcode, frame = ws.recv_data_frame(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    if len(frame.data) >= 2:
                        code = int.from_bytes(frame.data[:2], "big")
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    text = frame.data.decode()
                    with self.lock:
                        for seq, client_id in ARTICLE_RE.findall(text):
                            self.seen[int(seq)] = client_id
                        self.lock.notify_all()
        except (OSError, websocket.WebSocketException):
            code = None  # dropped without a close frame (1006)
        finally:
            ws.close()
            with self.lock:
                if self.ws is ws:
                    self.ws = None
                self.closes.append(code)
                self.lock.notify_all()

    @property
    def is_open(self) -> bool:
        with self.lock:
            return self.ws is not None

    def close(self) -> None:
        with self.lock:
            ws = self.ws
        if ws is not None:
            ws.close()
        if self.reader is not None:
            self.reader.join(timeout=10)

    # --- messages --------------------------------------------------------------------------
    def send(self, text: str, client_id: str | None = None) -> str:
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

    def last_seq(self) -> int:
        with self.lock:
            return max(self.seen, default=0)

    def client_ids(self) -> set[str]:
        with self.lock:
            return set(self.seen.values())

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}; seen seqs {sorted(self.seen)[-10:]}, "
                        f"closes {self.closes}"
                    )
                self.lock.wait(left)

    def wait_client_ids(self, client_ids: set[str], timeout: float = 15.0) -> None:
        self.wait_for(
            lambda: client_ids <= set(self.seen.values()), timeout, f"{len(client_ids)} messages"
        )

    def wait_closed(self, timeout: float) -> None:
        self.wait_for(lambda: self.ws is None, timeout, "the socket to close")
