"""A chat client over a real websocket (websocket-client), behaving like chat.js: it keeps the
last sequence it rendered and reconnects with ?after=<that sequence>. Every wait has a timeout."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable

import websocket

from tests.frames import seqs

CLOSE_ABNORMAL = 1006  # no close frame: the connection just ended


class ChatSocket:
    def __init__(
        self,
        base_ws_url: str,
        origin: str,
        conversation_id: int,
        cookies: dict,
        sslopt: dict | None = None,
    ) -> None:
        self.base = base_ws_url
        self.sslopt = sslopt  # wss://: e.g. {"ca_certs": <the stack's certificate>}
        self.origin = origin
        self.conversation_id = conversation_id
        self.cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self.ws: websocket.WebSocket | None = None
        self.frames: list[str] = []
        self.seqs: list[int] = []  # every sequence ever received, duplicates included
        self.close_code: int | None = None
        self.request_id: str | None = None

    @property
    def last_seq(self) -> int:
        return max(self.seqs, default=0)

    def connect(self, after: int | None = None, timeout: float = 10.0) -> ChatSocket:
        path = f"/ws/chat/{self.conversation_id}"
        if after is not None:
            path += f"?after={after}"
        self.ws = websocket.create_connection(
            self.base + path,
            cookie=self.cookie,
            origin=self.origin,
            timeout=timeout,
            sslopt=self.sslopt,
        )
        self.close_code = None
        self.request_id = (self.ws.getheaders() or {}).get("x-request-id")
        return self

    def reconnect(self, timeout: float = 10.0) -> ChatSocket:
        """What chat.js does after 1006/1012: reconnect and replay from the last sequence."""
        self.close()
        return self.connect(after=self.last_seq, timeout=timeout)

    def send(self, text: str, client_id: str | None = None) -> str:
        client_id = client_id or str(uuid.uuid4())
        self.ws.send(
            json.dumps(
                {"chat_message": text, "client_id": client_id, "HEADERS": {"HX-Request": "true"}}
            )
        )
        return client_id

    def _read_one(self, timeout: float) -> bool:
        """Reads one frame; False on timeout. Records text frames and the close code."""
        self.ws.settimeout(max(timeout, 0.01))
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return False
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            self.close_code = CLOSE_ABNORMAL
            return True
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            text = data.decode("utf-8")
            self.frames.append(text)
            self.seqs.extend(seqs(text))
        return True

    def wait_for(
        self,
        predicate: Callable[[ChatSocket], bool],
        timeout: float = 10.0,
        what: str = "condition",
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.close_code is not None:
                raise AssertionError(f"socket closed ({self.close_code}) waiting for {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; last seqs {self.seqs[-5:]}")
            self._read_one(left)

    def wait_seq(self, seq: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda s: s.last_seq >= seq, timeout, f"sequence {seq}")

    def wait_text(self, needle: str, timeout: float = 10.0) -> None:
        self.wait_for(lambda s: any(needle in f for f in s.frames), timeout, repr(needle))

    def quiet(self, seconds: float) -> None:
        """Reads whatever arrives within `seconds` (to show nothing more came)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and self.close_code is None:
            self._read_one(left)

    def wait_close(self, timeout: float = 15.0) -> int:
        """Reads (keeping messages) until the socket closes; returns the close code."""
        deadline = time.monotonic() + timeout
        while self.close_code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("socket did not close")
            self._read_one(left)
        return self.close_code

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):  # already gone is fine
                self.ws.close(timeout=1)
            self.ws = None
