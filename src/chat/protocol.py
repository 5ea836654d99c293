"""The websocket protocol's client frames, parsed: what a page may send (README "Websocket
protocol") and the error each malformed frame gets. No socket, no database."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass


class FrameError(ValueError):
    """A frame the server cannot act on; str() is the error line the client is shown, and
    `client_id` names the send it was about, when known."""

    def __init__(self, message: str, client_id: str | None = None) -> None:
        super().__init__(message)
        self.client_id = client_id


@dataclass(frozen=True, slots=True)
class SendMessage:
    text: object  # as sent; services.normalise_body checks it
    client_id: uuid.UUID | None

    @property
    def cid(self) -> str | None:
        return str(self.client_id) if self.client_id else None


@dataclass(frozen=True, slots=True)
class Typing:
    pass


@dataclass(frozen=True, slots=True)
class Read:
    seq: int


Frame = SendMessage | Typing | Read

# A page's frames are a flat object (htmx adds one nested HEADERS object). json.loads recurses
# once per level: a frame nested a few thousand deep exhausts the interpreter's recursion limit
# deep inside it, and whatever else runs on that exhausted stack (a garbage collection's
# finalizers, say) fails too. So depth is counted first, without recursion.
MAX_DEPTH = 16
# One left-to-right pass: a string (to its closing quote, or to the end if it has none) or a
# bracket. A string never starts inside another, so no position is scanned twice (a pattern
# that tried each quote as a start spent ~0.6 s on 10 KB of `\"` pairs).
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _too_deep(text: str) -> bool:
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # cannot nest deeper: the usual case
        return False
    depth = 0
    for part in _TOKENS.findall(text):
        if part == "[" or part == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif part == "]" or part == "}":
            depth -= 1
    return False


def parse_frame(text: str | None, max_bytes: int) -> Frame:
    """One client frame (None: a binary one). Raises FrameError."""
    if text is None:
        raise FrameError("Binary frames are not supported; send JSON text.")
    if len(text) > max_bytes:
        raise FrameError("Frame too large.")
    if _too_deep(text):
        raise FrameError("Malformed message: expected a JSON object.")
    try:
        data = json.loads(text)
    except ValueError:
        raise FrameError("Malformed message: expected a JSON object.") from None
    if not isinstance(data, dict):
        raise FrameError("Malformed message: expected a JSON object.")
    kind = data.get("type", "message")
    if kind == "message":
        return _send_message(data)
    if kind == "typing":
        return Typing()
    if kind == "read":
        try:
            return Read(int(data.get("seq")))
        except (TypeError, ValueError, OverflowError):
            raise FrameError("Malformed message: seq must be an integer.") from None
    raise FrameError("Unknown message type.")


def _send_message(data: dict) -> SendMessage:
    if "chat_message" not in data:
        raise FrameError("Malformed message: the chat_message field is missing.")
    raw = data.get("client_id")
    client_id = None
    if raw not in (None, ""):
        try:
            client_id = uuid.UUID(str(raw))
        except ValueError:
            raise FrameError("Malformed message: client_id must be a UUID.") from None
    return SendMessage(data["chat_message"], client_id)
