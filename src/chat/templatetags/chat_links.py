"""A message body as HTML: its text escaped, its web addresses made links and its
`@username` mentions marked.

Only `http://`, `https://` and `www.` addresses become links (a `www.` one gets `http://`);
any other scheme (`javascript:`, `data:`, `mailto:`) stays text. Every link opens in a new
tab with `rel="noopener noreferrer nofollow"`. Nothing is fetched or looked up: an address
is recognised by its spelling alone.

Rules for where an address ends, as people write them in prose: it starts after whitespace,
an opening bracket or a quote, or at the start; it stops at whitespace, `<`, `>` or a
quote; punctuation at its end (`.`, `,`, `!`, ...) is the sentence's, and so is a closing
bracket that the address does not open.

Mentions: `@` and a username's characters (Django's validator: letters, digits and
`@.+-_`) become `<span class="mention" data-mention="name">@name</span>`, the same for
every reader (fragments are rendered once for everyone): the page highlights the ones that
name its own user (chat.js). The `@` must come at the start or after a character that
cannot be in a username (whitespace, punctuation other than `.+-@`), so an e-mail address
("ann@example.com") mentions nobody; a dot at the end is the sentence's ("ask @bob.").
Inside a web address nothing is a mention. `mentioned_names` finds the same names the
filter marks (services.messages marks the mentioned participants).

Size: a message's frame is sized for 6 bytes a character (`&quot;`, config.settings checks
that CHAT_MAX_FRAME_BYTES carries one message). Links cost more than their text, so they
are made only while the body stays within 6 bytes a character plus `LINK_ALLOWANCE`;
addresses past that stay text. Ordinary prose never comes near it.

Line breaks are left as they are: the template's `linebreaksbr` turns them into `<br>`
(the budget counts each as `<br>`). Links and mentions share the budget, in the order they
come; once one does not fit, the rest of the body is plain text.
"""

from __future__ import annotations

import re

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

BYTES_PER_CHARACTER = 6  # `&quot;`: the most one character of text renders to
LINK_ALLOWANCE = 128  # bytes a message's links may take beyond that, all told
REL = "noopener noreferrer nofollow"

# Starts at the start, after whitespace, an opening bracket or a quote; runs to whitespace,
# a control character, `<`, `>` or a quote.
_CANDIDATE = re.compile(
    r"""(?<![^\s(\[{<"'])(?:https?://|www\.)[^\s<>"'\x00-\x1f\x7f]+""", re.IGNORECASE
)
# A mention: `@` not preceded by a username's character, then up to 150 of them.
USERNAME_CHARS = r"[\w.@+\-]"
_MENTION = rf"(?<!{USERNAME_CHARS})@(?P<name>{USERNAME_CHARS}{{1,150}})"
# Either, in one pass: an address is tried first, and a mention inside one is part of it.
_TOKEN = re.compile(rf"(?P<link>(?i:{_CANDIDATE.pattern}))|{_MENTION}")
# What must follow the scheme or `www.`: a host's first character (a letter or digit in
# any script), and for `www.` a further dot with something after it.
_HOST_START = re.compile(r"[^\W_]", re.UNICODE)
_WWW = re.compile(r"www\.[^\W_][^./?#]*\.[^\W_]", re.IGNORECASE)
_TRAILING = ".,:;!?…"
_PAIRS = {")": "(", "]": "[", "}": "{"}


def _trim(candidate: str) -> str:
    """`candidate` without the sentence's punctuation and unopened closing brackets."""
    url = candidate
    while url and (url[-1] in _TRAILING or _unopened(url)):
        url = url[:-1]
    return url


def _unopened(url: str) -> bool:
    """Whether `url` ends with a closing bracket that it does not open."""
    last = url[-1]
    return last in _PAIRS and url.count(_PAIRS[last]) < url.count(last)


def _href(url: str) -> str | None:
    """The link's target for a trimmed address, or None if it is not one."""
    lower = url.lower()
    if lower.startswith("www."):
        return "http://" + url if _WWW.match(url) else None
    rest = url[url.index("//") + 2 :]
    return url if _HOST_START.match(rest) else None


def _size(html: str) -> int:
    return len(html) if html.isascii() else len(html.encode())


def _tokens(text: str):
    """(start, end, html or None, name or None) for each address and mention of `text`,
    in order: `html` is the markup for text[start:end] (escaped), `name` a mention's."""
    for match in _TOKEN.finditer(text):
        if match.group("link") is not None:
            url = _trim(match.group())
            href = _href(url) if url else None
            if href is None:
                continue
            target = escape(href)
            html = f'<a href="{target}" rel="{REL}" target="_blank">{escape(url)}</a>'
            yield match.start(), match.start() + len(url), html, None
        else:
            name = match.group("name").rstrip(".")
            if not name:
                continue
            shown = escape(name)
            html = f'<span class="mention" data-mention="{shown}">@{shown}</span>'
            yield match.start(), match.start() + 1 + len(name), html, name


def mentioned_names(text: str) -> list[str]:
    """The usernames `text` mentions (as chat_links marks them), each once, in order."""
    if "@" not in text:
        return []
    return list(dict.fromkeys(name for *_, name in _tokens(text) if name is not None))


@register.filter
def chat_links(value: object) -> SafeString:
    """`value` as plain text: escaped, with its web addresses as links and its mentions
    marked (see the module)."""
    text = str(value)
    budget = (
        BYTES_PER_CHARACTER * len(text)
        + LINK_ALLOWANCE
        - _size(escape(text))
        - 3 * text.count("\n")  # each `\n` becomes `<br>`
    )
    parts: list[str] = []
    done = 0
    for start, end, html, _name in _tokens(text):
        cost = _size(html) - _size(escape(text[start:end]))  # beyond the escaped text
        if cost > budget:
            break
        budget -= cost
        parts.append(escape(text[done:start]))
        parts.append(html)
        done = end
    parts.append(escape(text[done:]))
    # Every part is escaped text, or a link or a mention built from escaped text.
    return mark_safe("".join(parts))  # noqa: S308
