"""Parley's websocket protocol as the load test speaks it: what a browser sends, and how the
HTML fragments it gets back are read.

Every load-test message body is `lt:<message uuid>:<send time, ns since the epoch>`; the same
uuid is the message's `client_id`, so a sender recognises its own echo as the server's ack.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from dataclasses import dataclass, field

BODY_PREFIX = "lt"

ARTICLE_RE = re.compile(
    r'<article id="msg-\d+" class="msg" data-seq="(?P<seq>\d+)" '
    r'data-sender-id="(?P<sender>\d+)"(?: data-client-id="(?P<cid>[^"]*)")?>'
    r'.*?<p class="body">(?P<body>.*?)</p></article>',
    re.DOTALL,
)
BODY_RE = re.compile(rf"^{BODY_PREFIX}:(?P<id>[0-9a-f]{{32}}):(?P<t_ns>\d+)$")
ERROR_RE = re.compile(
    r'<div id="chat-error"[^>]*?(?: data-client-id="(?P<cid>[^"]*)")?'
    r'(?: data-retry-after="(?P<retry>[^"]*)")?>(?P<text>.*?)</div>',
    re.DOTALL,
)
PRESENCE_RE = re.compile(
    r'<li id="presence-\d+" hx-swap-oob="true" class="presence" '
    r'data-user-id="(?P<uid>\d+)" data-online="(?P<online>true|false)"'
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One chat message as a recipient's socket received it."""

    seq: int
    sender_id: int
    client_id: str | None
    body: str
    message_id: str | None  # the load-test id parsed from the body, None for other traffic
    sent_ns: int | None


@dataclass(frozen=True, slots=True)
class Frame:
    deliveries: list[Delivery]
    errors: list[tuple[str | None, str]]  # (client_id, text)
    presence: list[tuple[int, bool]]  # (user id, online)
    # client_ids the server refused past capacity (not stored; a page would retry them)
    refusals: list[str] = field(default_factory=list)


def new_message(now_ns: int | None = None) -> tuple[str, str, int]:
    """Returns (message id, body, send time ns) for a fresh load-test message."""
    message_id = uuid.uuid4().hex
    sent_ns = time.time_ns() if now_ns is None else now_ns
    return message_id, f"{BODY_PREFIX}:{message_id}:{sent_ns}", sent_ns


def send_payload(body: str, message_id: str, conversation: int) -> str:
    """The frame htmx-ext-ws sends for the chat form: form values plus HEADERS."""
    return json.dumps(
        {
            "chat_message": body,
            "client_id": str(uuid.UUID(hex=message_id)),
            "HEADERS": {
                "HX-Request": "true",
                "HX-Trigger": "chat-form",
                "HX-Trigger-Name": None,
                "HX-Target": "chat-form",
                "HX-Current-URL": f"/c/{conversation}",
            },
        }
    )


def parse_frame(text: str) -> Frame:
    deliveries = []
    for m in ARTICLE_RE.finditer(text):
        # linebreaksbr and autoescape: our bodies have no newlines, so unescaping is exact.
        body = html.unescape(m["body"])
        parsed = BODY_RE.match(body)
        deliveries.append(
            Delivery(
                seq=int(m["seq"]),
                sender_id=int(m["sender"]),
                client_id=m["cid"] or None,
                body=body,
                message_id=parsed["id"] if parsed else None,
                sent_ns=int(parsed["t_ns"]) if parsed else None,
            )
        )
    errors, refusals = [], []
    for m in ERROR_RE.finditer(text):
        if m["retry"] and m["cid"]:
            refusals.append(m["cid"])
        else:
            errors.append((m["cid"] or None, html.unescape(m["text"]).strip()))
    presence = [(int(m["uid"]), m["online"] == "true") for m in PRESENCE_RE.finditer(text)]
    return Frame(deliveries, errors, presence, refusals)


def client_id_hex(client_id: str | None) -> str | None:
    if not client_id:
        return None
    try:
        return uuid.UUID(client_id).hex
    except ValueError:
        return None
