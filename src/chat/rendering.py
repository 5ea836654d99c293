"""HTML fragments for the HTMX websocket extension.

A message is rendered once and the same bytes go to every recipient: the mine/theirs look
comes from the page (a per-user CSS rule on data-sender-id), not from rendering twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.template.loader import get_template
from django.utils.html import format_html

from chat.models import Message
from chat.selectors import ConversationRow


def message_html(message: Message) -> str:
    return get_template("chat/partials/message.html").render({"message": message})


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
