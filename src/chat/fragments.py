"""Every HTML fragment Parley sends, rendered from the templates in chat/partials/: the
pages' message history and every websocket frame (messages and their out-of-band wrapper,
errors, presence, typing, conversation-list rows, the history reset). Nothing else in the
project makes HTML.

A message is rendered once and the same bytes go to every recipient: the mine/theirs look
comes from the page (a per-user CSS rule on data-sender-id), not from rendering twice.
Stored messages never change, so their fragments are also kept in the process's fragment
cache (`message_cache`): a conversation page or a replay renders only what it has not
rendered before. Every fragment a page may receive twice carries an id, so a replay
replaces rather than duplicates.
"""

from __future__ import annotations

import datetime
import functools
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable

from django.conf import settings
from django.template.loader import get_template
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from chat import selectors
from chat.models import Message
from chat.selectors import ConversationRow


class FragmentCache:
    """Rendered fragments by key, the least recently used dropped past `max_bytes`.

    Bounded by memory, not by count: a fragment's size is up to the sender (4,000 `"` render
    to 24,218 characters), so a count bound let one user push a process past its container's
    memory limit. Each entry is charged what it holds: the str's own size (sys.getsizeof:
    1, 2 or 4 bytes a character, by the widest one) and the key and dict slot around it.

    In process memory on purpose: a deploy with changed templates starts empty, with no
    stale HTML shared across versions. Values are str, kept as they are (Django's LocMemCache
    pickles every value and checks every key, on a page's path). Thread-safe: request
    threads and the websocket process's threads share it.
    """

    ENTRY_OVERHEAD = 250  # the key tuple and its ints, the OrderedDict's slot and links

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries are charged, in all
        self._entries: OrderedDict[tuple, tuple[str, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[tuple]) -> dict[tuple, str]:
        found = {}
        with self._lock:
            entries = self._entries
            for key in keys:
                entry = entries.get(key)
                if entry is not None:
                    entries.move_to_end(key)
                    found[key] = entry[0]
        return found

    def set_many(self, fragments: dict[tuple, str]) -> None:
        with self._lock:
            entries = self._entries
            for key, html in fragments.items():
                size = sys.getsizeof(html) + self.ENTRY_OVERHEAD
                if size > self.max_bytes:
                    continue  # never worth the whole cache
                old = entries.pop(key, None)
                if old is not None:
                    self.bytes -= old[1]
                entries[key] = (html, size)
                self.bytes += size
            while self.bytes > self.max_bytes:
                self.bytes -= entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


message_cache = FragmentCache(settings.CHAT_FRAGMENT_CACHE_BYTES)


def _fragment_key(
    pk: int,
    conversation_id: int,
    seq: int,
    sender_id: int,
    created_at: object,
    edited_at: object = None,
    deleted_at: object = None,
) -> tuple:
    # Not the id alone: a database restored or recreated under a running process reuses
    # ids, and after a restore a new message can take an old one's id, sequence and sender.
    # An edit or a delete changes what is shown: its time is part of the key.
    return (pk, conversation_id, seq, sender_id, created_at, edited_at, deleted_at)


def message_html(message: Message) -> str:
    """A message as it is now: its text, "(edited)", or a tombstone once deleted."""
    key = _fragment_key(
        message.pk,
        message.conversation_id,
        message.seq,
        message.sender_id,
        message.created_at,
        message.edited_at,
        message.deleted_at,
    )
    html = message_cache.get_many((key,)).get(key)
    if html is None:
        html = get_template("chat/partials/message.html").render({"message": message})
        message_cache.set_many({key: html})
    return html


def change_html(change: Message) -> str:
    """An edit or a delete (`change.target` loaded): the message it changes as it was right
    after it, carrying the change's own number (`data-update-seq`) so a page replaces the
    message in place. A message deleted since shows as deleted in every earlier edit too:
    its text is never sent again."""
    target = change.target
    shown = Message(
        id=target.pk,
        conversation_id=target.conversation_id,
        sender=target.sender,
        seq=target.seq,
        client_id=target.client_id,
        body=change.body,
        created_at=target.created_at,
        edited_at=change.created_at if change.kind == Message.EDIT else target.edited_at,
        deleted_at=change.created_at if change.kind == Message.DELETE else target.deleted_at,
    )
    if shown.deleted_at:
        shown.body = ""
    return _render("chat/partials/message.html", {"message": shown, "update_seq": change.seq})


def people_html(entry: Message) -> str:
    """A change of people ("alice added bob"): a line of its own in the conversation."""
    return _render("chat/partials/people.html", {"message": entry})


def entry_html(entry: Message, *, marked: bool = False) -> str:
    """Any entry of a conversation's stream as pages are sent it (`target` and its sender
    loaded for a change). `marked`: a search result opened, rendered marked and not kept
    in the cache (which holds what every reader gets)."""
    if entry.kind in Message.CHANGES:
        return change_html(entry)
    if entry.kind in Message.PEOPLE:
        return people_html(entry)
    if marked:
        return _render("chat/partials/message.html", {"message": entry, "target": True})
    return message_html(entry)


def history_html(
    conversation_id: int, keys: list[tuple], *, target_id: int | None = None
) -> SafeString:
    """Fragments for the entries `keys` names ((id, seq, sender id, created_at, edited_at,
    deleted_at) from selectors.history_keys), in order. Only the ones not in the fragment
    cache are loaded and rendered: on a busy conversation, none. The message `target_id` (a
    search result opened) is rendered marked, and never cached."""
    wanted = {key[0]: _fragment_key(key[0], conversation_id, *key[1:]) for key in keys}
    cached = message_cache.get_many(wanted.values())
    if target_id in wanted:
        cached.pop(wanted[target_id], None)
    missing = [pk for pk, key in wanted.items() if key not in cached]
    if missing:
        fresh = {
            wanted[m.pk]: entry_html(m, marked=m.pk == target_id)
            for m in selectors.messages_by_id(missing)
            if m.conversation_id == conversation_id
        }
        message_cache.set_many(
            {key: html for key, html in fresh.items() if key != wanted.get(target_id)}
        )
        cached.update(fresh)
    # Each part is the autoescaped output of the message template.
    return mark_safe("".join(cached.get(key, "") for key in wanted.values()))  # noqa: S308


def highlight(text: str, terms: list[str]) -> SafeString:
    """`text` escaped, with every case-insensitive occurrence of `terms` in <mark>. The
    matches are found in the raw text and each piece is escaped on its own, so a term never
    matches inside an entity the escaping made (`amp` in `&amp;`)."""
    terms = sorted({t for t in terms if t}, key=len, reverse=True)  # the longest match wins
    if not terms:
        return escape(text)
    pattern = re.compile("|".join(re.escape(t) for t in terms), re.IGNORECASE)
    parts, end = [], 0
    for match in pattern.finditer(text):
        parts.append(escape(text[end : match.start()]))
        parts.append(format_html("<mark>{}</mark>", match.group()))
        end = match.end()
    parts.append(escape(text[end:]))
    # Every part is escaped user text or a <mark> around escaped user text.
    return mark_safe("".join(parts))  # noqa: S308


def reset_html(epoch: str, reason: str) -> str:
    """Tells the page to start over (reload): its history was restored ("restored"), it is
    too far behind to replay ("behind"), or it says it saw more than exists ("ahead")."""
    return _render("chat/partials/reset.html", {"epoch": epoch, "reason": reason})


@functools.cache
def _oob() -> tuple[str, str]:
    """chat/partials/messages_oob.html cut at its one slot: a frame is made for every message
    a process stores or reads, so it is joined, not rendered."""
    html = get_template("chat/partials/messages_oob.html").render({"messages": "\x00"})
    before, after = html.split("\x00")
    return before, after


def ws_message(html: str) -> str:
    """A message fragment's whole websocket frame: the ws extension appends it to #messages.
    Frames of several messages concatenate (chat.stream.frames)."""
    before, after = _oob()
    return before + html + after


def error_html(text: str, *, client_id: str | None = None, retry_after: float | None = None) -> str:
    """The error line; with `retry_after` (seconds) the page keeps the send and retries it."""
    return _render(
        "chat/partials/error.html",
        {"text": text, "client_id": client_id, "retry_after": retry_after},
    )


def confirmed_html(client_id: str) -> str:
    """Tells a page its send is stored, without its message: the page already has it, or
    has it in the history above what it shows (a resend after a reload)."""
    return _render("chat/partials/confirmed.html", {"client_id": client_id})


BUSY_TEXT = "The server is busy: your message was not sent yet. Retrying…"


@functools.cache
def _busy_parts() -> tuple[str, str, str]:
    """chat/partials/error.html for a refusal past capacity, cut at its client id and retry
    hint: a process that refuses thousands of sends a second renders it once."""
    html = _render(
        "chat/partials/error.html",
        {"text": BUSY_TEXT, "client_id": "\x00", "retry_after": "\x01"},
    )
    before, rest = html.split("\x00")
    middle, after = rest.split("\x01")
    return before, middle, after


def busy_html(client_id: str | None, retry_after: float) -> str:
    """error_html(BUSY_TEXT, client_id=..., retry_after=...), without a render. `client_id`
    is a UUID's text (protocol.SendMessage.cid) or None."""
    if client_id is None:
        return error_html(BUSY_TEXT, retry_after=retry_after)
    before, middle, after = _busy_parts()
    return f"{before}{client_id}{middle}{retry_after:g}{after}"


def presence_html(user_id: int, username: str, online: bool) -> str:
    return _render(
        "chat/partials/presence.html", {"user_id": user_id, "username": username, "online": online}
    )


def typing_html(user_id: int, username: str) -> str:
    return _render("chat/partials/typing.html", {"user_id": user_id, "username": username})


def conversation_row_html(row: ConversationRow) -> str:
    """A user's own conversation-list row that moves to the top of the list (chat.js drops
    the old one)."""
    return _render("chat/partials/conversation_row_oob.html", {"row": row})


def conversation_row_live_html(
    *, conversation_id: int, last_seq: int, preview: str, sender: str, at: float
) -> str:
    """A new message's conversation-list row, the same for every member's list (rendered once
    per process, chat.hub): no title or unread count, which are the viewer's; chat.js keeps
    the page's title and works the count out from its own read marker."""
    return _render(
        "chat/partials/conversation_row_live.html",
        {
            "conversation_id": conversation_id,
            "last_seq": last_seq,
            "preview": preview,
            "sender": sender,
            "at": datetime.datetime.fromtimestamp(at, tz=datetime.UTC) if at else None,
        },
    )


def conversation_row_gone_html(conversation_id: int) -> str:
    """Takes a conversation off the list (its user left or was removed)."""
    return _render("chat/partials/conversation_row_gone.html", {"conversation_id": conversation_id})


def _render(template: str, context: dict) -> str:
    return get_template(template).render(context)
