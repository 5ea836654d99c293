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
BODY_RE = re.compile(r'<p class="body( [^"]*)?">(.*?)</p>', re.DOTALL)
EDITED_RE = re.compile(r'<span class="edited"')
TIME_RE = re.compile(r"\s*<time\b[^>]*>.*?</time>\s*$", re.DOTALL)
CONFIRMED_RE = re.compile(r'<div\b([^>]*\bid="chat-confirmed"[^>]*)>')
ERROR_RE = re.compile(r'<div\b([^>]*\bid="chat-error"[^>]*)>(.*?)</div>', re.DOTALL)
RESET_RE = re.compile(r'<[a-z]+\b([^>]*\bid="chat-reset"[^>]*)>')
CHAT_RE = re.compile(r'<section\b([^>]*\bid="chat"[^>]*)>')
OLDER_RE = re.compile(r'<[a-z]+\b([^>]*\bid="load-older"[^>]*)>')
TAG_RE = re.compile(r"<[^>]*>")
# The server's own tags in a body: links and mentions (chat_links).
LINK_TAG_RE = re.compile(r"<a\b[^>]*>|</a>|<span class=\"mention\"[^>]*>|</span>")
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def attrs(text: str) -> dict[str, str]:
    return {m[1]: html.unescape(m[2] or "") for m in ATTR_RE.finditer(text)}


def body_text(raw: str) -> str:
    """The text the sender typed: Django escapes it, chat_links wraps its web addresses in
    <a> tags and its mentions in mention spans, then linebreaksbr turns each newline into
    <br> (a `<` typed is `&lt;` by then, so every tag is the server's)."""
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
    """An entry as a page shows it: a message (`kind` "message") or a change of people
    ("added", "left", "removed": `body` is its line, "alice added bob"). `body` is the text
    as the page would show it ("" for a deleted message's tombstone). `update_seq`: an edit
    or a delete, the message as it now is under the change's own number."""

    seq: int
    dom_id: str
    sender_id: int
    cid: str | None
    body: str
    kind: str = "message"
    update_seq: int | None = None
    edited: bool = False  # "(edited)" in its header
    deleted: bool = False  # the tombstone ("msg deleted")


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
    confirms: list[str] = field(default_factory=list)  # #chat-confirmed: stored, not shown


def articles(text: str) -> list[Article]:
    out = []
    for m in ARTICLE_RE.finditer(text):
        a = attrs(m[1])
        classes = a.get("class", "").split()
        if "msg" not in classes or "data-seq" not in a:
            continue
        body = BODY_RE.search(m[2])
        deleted = "deleted" in classes or bool(body and "tombstone" in (body[1] or "").split())
        if "people" in classes:
            kind = a.get("data-kind") or "people"
            text_ = html.unescape(TIME_RE.sub("", body[2])) if body else ""
        else:
            kind = "message"
            text_ = body_text(body[2]) if body and not deleted else ""
        update = a.get("data-update-seq")
        out.append(
            Article(
                seq=int(a["data-seq"]),
                dom_id=a.get("id", ""),
                sender_id=int(a.get("data-sender-id") or 0),
                cid=norm_cid(a.get("data-client-id")),
                body=text_,
                kind=kind,
                update_seq=int(update) if update else None,
                edited=bool(EDITED_RE.search(m[2])) and not deleted,
                deleted=deleted,
            )
        )
    return out


def parse_frame(text: str) -> Frame:
    frame = Frame()
    if reset := RESET_RE.search(text):
        frame.reset = attrs(reset[1])
    frame.articles = articles(text)
    frame.confirms = [
        c for m in CONFIRMED_RE.finditer(text) if (c := norm_cid(attrs(m[1]).get("data-confirms")))
    ]
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
    csrf: str | None = None  # a form's csrfmiddlewaretoken (the conversation page only)
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
        if token := CSRF_RE.search(text):
            page.csrf = token[1]
        try:
            page.last_seq = int(a.get("data-last-seq") or 0)
        except ValueError as exc:
            raise PageError(f"#chat[data-last-seq] is {a.get('data-last-seq')!r}") from exc
    return page
