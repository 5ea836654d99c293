"""What a page reads in what the server sends: websocket frames (messages, errors, the
history reset) and the conversation page with its older pages.

Attributes are read by name, in any order and with any others beside them, so a fragment that
gains an attribute (a reset's `data-reason`) is still read.
"""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass, field

ATTR_RE = re.compile(r'([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*"([^"]*)")?')
ARTICLE_RE = re.compile(r"<article\b([^>]*)>(.*?)</article>", re.DOTALL)
BODY_RE = re.compile(r'<p class="body">(.*?)</p>', re.DOTALL)
ERROR_RE = re.compile(r'<div\b([^>]*\bid="chat-error"[^>]*)>(.*?)</div>', re.DOTALL)
RESET_RE = re.compile(r'<[a-z]+\b([^>]*\bid="chat-reset"[^>]*)>')
CHAT_RE = re.compile(r'<section\b([^>]*\bid="chat"[^>]*)>')
OLDER_RE = re.compile(r'<[a-z]+\b([^>]*\bid="load-older"[^>]*)>')
TAG_RE = re.compile(r"<[^>]*>")
LINK_TAG_RE = re.compile(r"<a\b[^>]*>|</a>")


def attrs(text: str) -> dict[str, str]:
    return {m[1]: html.unescape(m[2] or "") for m in ATTR_RE.finditer(text)}


def body_text(raw: str) -> str:
    """The text the sender typed: Django escapes it, chat_links wraps its web addresses in
    <a> tags, then linebreaksbr turns each newline into <br> (a `<` typed is `&lt;` by then,
    so every tag is the server's)."""
    return html.unescape(LINK_TAG_RE.sub("", raw).replace("<br>", "\n"))


def norm_cid(cid: str | None) -> str | None:
    if not cid:
        return None
    try:
        return str(uuid.UUID(cid))
    except ValueError:
        return cid


@dataclass(frozen=True, slots=True)
class Article:
    """A message as a page shows it. `body` is the text as the page would show it."""

    seq: int
    dom_id: str
    sender_id: int
    cid: str | None
    body: str


@dataclass(frozen=True, slots=True)
class Error:
    cid: str | None
    retry_after: float | None
    text: str


@dataclass(slots=True)
class Frame:
    articles: list[Article] = field(default_factory=list)
    errors: list[Error] = field(default_factory=list)
    reset: dict[str, str] | None = None  # the chat-reset element's attributes


def articles(text: str) -> list[Article]:
    out = []
    for m in ARTICLE_RE.finditer(text):
        a = attrs(m[1])
        if "msg" not in a.get("class", "").split() or "data-seq" not in a:
            continue
        body = BODY_RE.search(m[2])
        out.append(
            Article(
                seq=int(a["data-seq"]),
                dom_id=a.get("id", ""),
                sender_id=int(a.get("data-sender-id") or 0),
                cid=norm_cid(a.get("data-client-id")),
                body=body_text(body[1]) if body else "",
            )
        )
    return out


def parse_frame(text: str) -> Frame:
    frame = Frame()
    if reset := RESET_RE.search(text):
        frame.reset = attrs(reset[1])
    frame.articles = articles(text)
    for m in ERROR_RE.finditer(text):
        a = attrs(m[1])
        retry = a.get("data-retry-after")
        try:
            retry_after = float(retry) if retry else None
        except ValueError:
            retry_after = 2.0  # a hint we cannot read is still "retry later"
        message = html.unescape(TAG_RE.sub("", m[2])).strip()
        frame.errors.append(Error(norm_cid(a.get("data-client-id")), retry_after, message))
    return frame


@dataclass(slots=True)
class Page:
    """A conversation page (GET /c/<id>) or one of its older pages (/c/<id>/history)."""

    articles: list[Article]
    older_url: str | None  # the "Load older messages" button's URL
    epoch: str | None = None  # #chat[data-epoch] (the conversation page only)
    last_seq: int | None = None  # #chat[data-last-seq]


class PageError(ValueError):
    pass


def parse_page(text: str, conversation: bool) -> Page:
    older = OLDER_RE.search(text)
    page = Page(articles(text), attrs(older[1]).get("hx-get") if older else None)
    if conversation:
        chat = CHAT_RE.search(text)
        if chat is None:
            raise PageError("no #chat section in the conversation page")
        a = attrs(chat[1])
        page.epoch = a.get("data-epoch", "")
        try:
            page.last_seq = int(a.get("data-last-seq") or 0)
        except ValueError as exc:
            raise PageError(f"#chat[data-last-seq] is {a.get('data-last-seq')!r}") from exc
    return page
