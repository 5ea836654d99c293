"""HTML fragments for the HTMX websocket extension.

A message is rendered once and the same bytes go to every recipient: the mine/theirs look
comes from the page (a per-user CSS rule on data-sender-id), not from rendering twice.
Stored messages never change, so their fragments are also kept in the process's fragment
cache (`fragments`): a conversation page or a replay renders only what it has not rendered
before.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable

from django.conf import settings
from django.template.loader import get_template
from django.utils.html import format_html
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
    pickles every value and checks every key, which cost a page of 50 messages ~7% of its
    CPU). Thread-safe: request threads and the websocket process's threads share it.
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


fragments = FragmentCache(settings.CHAT_FRAGMENT_CACHE_BYTES)


def _fragment_key(
    pk: int, conversation_id: int, seq: int, sender_id: int, created_at: object
) -> tuple:
    # Not the id alone: a database restored or recreated under a running process reuses
    # ids, and after a restore a new message can take an old one's id, sequence and sender.
    return (pk, conversation_id, seq, sender_id, created_at)


def message_html(message: Message) -> str:
    key = _fragment_key(
        message.pk, message.conversation_id, message.seq, message.sender_id, message.created_at
    )
    html = fragments.get_many((key,)).get(key)
    if html is None:
        html = get_template("chat/partials/message.html").render({"message": message})
        fragments.set_many({key: html})
    return html


def history_html(conversation_id: int, keys: list[tuple]) -> SafeString:
    """Fragments for the messages `keys` names ((id, seq, sender id, created_at) from
    selectors.history_keys), in order. Only the messages not in the fragment cache are
    loaded and rendered: on a busy conversation, none."""
    wanted = {key[0]: _fragment_key(key[0], conversation_id, *key[1:]) for key in keys}
    cached = fragments.get_many(wanted.values())
    missing = [pk for pk, key in wanted.items() if key not in cached]
    if missing:
        template = get_template("chat/partials/message.html")
        fresh = {
            wanted[m.pk]: template.render({"message": m})
            for m in selectors.messages_by_id(missing)
            if m.conversation_id == conversation_id
        }
        fragments.set_many(fresh)
        cached.update(fresh)
    # Each part is the autoescaped output of the message template.
    return mark_safe("".join(cached.get(key, "") for key in wanted.values()))  # noqa: S308


def reset_html(epoch: str) -> str:
    """Tells the page its history is gone (restored or failed over): chat.js starts over."""
    return get_template("chat/partials/reset.html").render({"epoch": epoch})


def ws_messages(fragments: Iterable[str]) -> str:
    """Wraps message fragments so the ws extension appends them to #messages."""
    return '<div hx-swap-oob="beforeend:#messages">' + "".join(fragments) + "</div>"


def error_html(text: str, *, client_id: str | None = None) -> str:
    return get_template("chat/partials/error.html").render({"text": text, "client_id": client_id})


def presence_html(user_id: int, username: str, online: bool) -> str:
    return format_html(
        '<li id="presence-{}" hx-swap-oob="true" class="presence" data-user-id="{}" '
        'data-online="{}"><span class="dot" aria-hidden="true"></span>{}'
        '<span class="sr-only">{}</span></li>',
        user_id,
        user_id,
        "true" if online else "false",
        username,
        " (online)" if online else " (offline)",
    )


def typing_html(user_id: int, username: str) -> str:
    return format_html(
        '<span id="typing-{}" hx-swap-oob="true" class="typing active" data-user-id="{}">'
        "{} is typing…</span>",
        user_id,
        user_id,
        username,
    )


def conversation_row_html(row: ConversationRow) -> str:
    """A conversation-list row that moves to the top of the list (chat.js drops the old one)."""
    html = get_template("chat/partials/conversation_row.html").render({"row": row})
    return '<div hx-swap-oob="afterbegin:#conversation-list">' + html + "</div>"
