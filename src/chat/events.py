"""Every event one process sends to others through the channel layer: each type is built by
one function here and sent by one verb, and a receiver reads it through `parse`, which
checks it against the type's schema (Zulip's `send_event` and its event schemas).
docs/architecture.md, "Events".

Two kinds, by who receives them:

- conversation events go to every process following a conversation (its hub, chat.hub),
  which hands them to its sockets of that conversation: `message`, `typing`, `presence`,
  `members`;
- user events go to every process with a socket of that user (its user hub), which hands
  them to that user's sockets: `session_ended`, `read`, `joined`, `mention`.

One verb, named for who receives: `broadcast(event)` (and `broadcast_sync` from sync code)
sends to every process following the event's conversation or user, this one included.
Handing frames to this process's sockets is the hub's `local_broadcast`.

Type names and fields only grow: during a rolling upgrade two releases read each other's
events, so a field a previous release does not send is optional here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from asgiref.sync import async_to_sync

from parley.layer import group_send

logger = logging.getLogger(__name__)

MESSAGE = "chat.message"
TYPING = "chat.typing"
PRESENCE = "chat.presence"
MEMBERS = "chat.members"
SESSION_ENDED = "session.end"
READ = "inbox.read"
JOINED = "inbox.joined"
MENTION = "inbox.mention"

_NUMBER = (int, float)
# type -> (required fields, optional fields), each field -> accepted types
SCHEMAS: dict[str, tuple[dict[str, tuple[type, ...]], dict[str, tuple[type, ...]]]] = {
    MESSAGE: (
        {"conversation_id": (int,), "seq": (int,), "frame": (str,)},
        # t: publish time on the publisher's clock; from: the publisher (chat.hub); the rest
        # is the conversation list's row (preview, sender name, stored at).
        {"t": _NUMBER, "from": (str,), "preview": (str,), "sender": (str,), "at": _NUMBER},
    ),
    TYPING: ({"user_id": (int,), "frame": (str,)}, {"conversation_id": (int,)}),
    PRESENCE: (
        {"changes": (list,)},
        # frame, user_id, online: one user's change as the previous release reads it.
        {"conversation_id": (int,), "frame": (str,), "user_id": (int,), "online": (bool,)},
    ),
    MEMBERS: ({"conversation_id": (int,), "removed": (list,), "added": (list,)}, {}),
    # user_id: which user's sockets (a previous release's logout named none; the heartbeat
    # closes those sockets instead).
    SESSION_ENDED: ({}, {"user_id": (int,), "session": (str,)}),
    READ: ({"conversation_id": (int,), "seq": (int,)}, {"user_id": (int,)}),
    JOINED: ({"conversation_id": (int,)}, {"user_id": (int,)}),
    MENTION: ({"user_id": (int,), "conversation_id": (int,), "seq": (int,)}, {}),
}
CONVERSATION_EVENTS = frozenset({MESSAGE, TYPING, PRESENCE, MEMBERS})
USER_EVENTS = frozenset({SESSION_ENDED, READ, JOINED, MENTION})


class EventError(ValueError):
    """An event that does not match its type's schema."""


def conversation_group(conversation_id: int) -> str:
    """Every process following the conversation (its hub)."""
    return f"chat.{conversation_id}"


def user_group(user_id: int) -> str:
    """Every process with a socket of the user (its user hub)."""
    return f"user.{user_id}"


def check(event: dict) -> dict:
    """`event`, if it matches its type's schema; else EventError."""
    kind = event.get("type")
    if kind not in SCHEMAS:
        raise EventError(f"unknown event type {kind!r}")
    required, optional = SCHEMAS[kind]
    for name, types in required.items():
        if name not in event:
            raise EventError(f"{kind} without {name}")
        if not _is(event[name], types):
            raise EventError(f"{kind}.{name} is {type(event[name]).__name__}")
    for name, types in optional.items():
        if name in event and not _is(event[name], types):
            raise EventError(f"{kind}.{name} is {type(event[name]).__name__}")
    return event


def _is(value: object, types: tuple[type, ...]) -> bool:
    # bool is an int to isinstance; not to a schema
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def parse(message: dict) -> dict | None:
    """A received event, checked; None (logged) for one this release cannot read."""
    try:
        return check(message)
    except EventError as exc:
        logger.warning("event refused", extra={"error": str(exc)})
        return None


def group_of(event: dict) -> str:
    if event["type"] in CONVERSATION_EVENTS:
        return conversation_group(event["conversation_id"])
    return user_group(event["user_id"])


# --- conversation events ------------------------------------------------------------------


def message(
    *,
    conversation_id: int,
    seq: int,
    frame: str,
    publisher: str,
    preview: str = "",
    sender: str = "",
    at: float = 0.0,
    listed: bool = True,
) -> dict:
    """A stored entry of the conversation's stream (a message, an edit, a delete, a change
    of people): its sequence number and the frame every member's socket gets. `listed`: the
    conversation lists show its row (preview, sender, at); an entry that changes nothing
    there (an edit of an older message, a change of people) leaves them as they are."""
    event = {
        "type": MESSAGE,
        "conversation_id": conversation_id,
        "seq": seq,
        "frame": frame,
        "t": time.time(),
        "from": publisher,
    }
    if listed:
        event.update(preview=preview, sender=sender, at=at)
    return check(event)


def typing(*, conversation_id: int, user_id: int, frame: str) -> dict:
    """`user_id` is typing: to every member's socket but the typist's."""
    return check(
        {"type": TYPING, "conversation_id": conversation_id, "user_id": user_id, "frame": frame}
    )


def presence(*, conversation_id: int, changes: list[list], frame: str) -> dict:
    """Members who came online or went offline: [[user id, online], ...]."""
    first_uid, first_on = changes[0]
    return check(
        {
            "type": PRESENCE,
            "conversation_id": conversation_id,
            "changes": changes,
            "user_id": first_uid,
            "online": first_on,
            "frame": frame,
        }
    )


def members(*, conversation_id: int, removed: list[int], added: list[int]) -> dict:
    """Participants removed (their sockets on the conversation close with 4403) or added."""
    return check(
        {"type": MEMBERS, "conversation_id": conversation_id, "removed": removed, "added": added}
    )


# --- user events --------------------------------------------------------------------------


def session_tag(session_key: str) -> str:
    """How events name a session: not its key, which would let a reader of the layer log in."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


def session_ended(*, user_id: int, session_key: str | None) -> dict:
    """The user logged out of one session (its sockets close with 4401); None: every session."""
    event: dict[str, Any] = {"type": SESSION_ENDED, "user_id": user_id}
    if session_key:
        event["session"] = session_tag(session_key)
    return check(event)


def read(*, user_id: int, conversation_id: int, seq: int) -> dict:
    """The user's read marker moved: their conversation lists show the new unread count."""
    return check({"type": READ, "user_id": user_id, "conversation_id": conversation_id, "seq": seq})


def joined(*, user_id: int, conversation_id: int) -> dict:
    """The user is in a new conversation: their conversation lists follow it."""
    return check({"type": JOINED, "user_id": user_id, "conversation_id": conversation_id})


def mention(*, user_id: int, conversation_id: int, seq: int) -> dict:
    """Message `seq` mentions the user: their conversation lists mark the conversation."""
    return check(
        {"type": MENTION, "user_id": user_id, "conversation_id": conversation_id, "seq": seq}
    )


# --- the verb -------------------------------------------------------------------------------


async def broadcast(event: dict) -> bool:
    """`event` to every process following its conversation or user, this one included.
    False (logged and counted) when the layer is down."""
    return await group_send(group_of(event), event)


def broadcast_sync(event: dict) -> bool:
    """broadcast() from sync code (views, signals): a failure is logged, never raised."""
    try:
        return async_to_sync(broadcast)(event)
    except Exception:  # the layer being down must not fail the request that sent it
        logger.exception("could not broadcast an event", extra={"type": event.get("type")})
        return False
