"""chat.templatetags.chat_links: web addresses in a message become links that open in a new
tab without referrer or opener, `@username` mentions become a marked span; everything else
stays escaped text, as `linebreaksbr` wrote it before; no scheme but http(s) is ever a link;
and a body full of links or mentions still fits the frame a message is sized for."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.template import engines
from django.utils import timezone

from chat import fragments
from chat.models import Message
from chat.stream import frame_bytes
from chat.templatetags.chat_links import (
    BYTES_PER_CHARACTER,
    LINK_ALLOWANCE,
    chat_links,
    mentioned_names,
)
from tests.factories import make_conversation, make_user

BODY = engines["django"].from_string("{% load chat_links %}{{ body|chat_links|linebreaksbr }}")
BEFORE = engines["django"].from_string("{{ body|linebreaksbr }}")
A = 'rel="noopener noreferrer nofollow" target="_blank"'


def render(body: str) -> str:
    return BODY.render({"body": body})


def link(href: str, text: str | None = None) -> str:
    return f'<a href="{href}" {A}>{text if text is not None else href}</a>'


def hrefs(html: str) -> list[str]:
    return re.findall(r'<a href="([^"]*)"', html)


@pytest.mark.parametrize(
    "body",
    [
        "plain words, nothing else",
        "quotes \" and ' and & and <b>tags</b>\nline two\r\nline three",
        "\U0001f600 emoji and ünïcödé",
        "",
    ],
)
def test_text_without_addresses_renders_as_linebreaksbr_did(body):
    assert render(body) == BEFORE.render({"body": body})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("https://example.com", link("https://example.com")),
        (
            "see http://example.com/a?b=1&c=2#d ok",
            "see " + link("http://example.com/a?b=1&amp;c=2#d") + " ok",
        ),
        ("HTTPS://EXAMPLE.COM/X", link("HTTPS://EXAMPLE.COM/X")),
        ("www.example.com", link("http://www.example.com", "www.example.com")),
        (
            "go to www.example.org/path.",
            "go to " + link("http://www.example.org/path", "www.example.org/path") + ".",
        ),
        ("(see https://example.com/x)", "(see " + link("https://example.com/x") + ")"),
        (
            "https://en.wikipedia.org/wiki/Foo_(bar), yes",
            link("https://en.wikipedia.org/wiki/Foo_(bar)") + ", yes",
        ),
        ("Really? https://example.com!?", "Really? " + link("https://example.com") + "!?"),
        ('"https://example.com"', "&quot;" + link("https://example.com") + "&quot;"),
        ("<https://example.com>", "&lt;" + link("https://example.com") + "&gt;"),
        ("https://münchen.example/straße", link("https://münchen.example/straße")),
        ("a\nhttps://example.com\nb", "a<br>" + link("https://example.com") + "<br>b"),
        (
            "two: https://a.example https://b.example",
            "two: " + link("https://a.example") + " " + link("https://b.example"),
        ),
    ],
)
def test_web_addresses_become_links_that_open_apart(body, expected):
    assert render(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "javascript:alert(1)",
        "JavaScript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "vbscript:msgbox(1)",
        "mailto:someone@example.com",
        "ftp://example.com/file",
        "http://",
        "https://.example.com",
        "www.",
        "www.example",
        "nothttp://example.com",
        "javascript:http://example.com",
        "user@www.example.com",
    ],
)
def test_other_schemes_and_non_addresses_stay_text(body):
    html = render(body)
    assert "<a " not in html
    assert html == BEFORE.render({"body": body})


@pytest.mark.parametrize(
    "body",
    [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(1)>',
        'https://example.com/"><img src=x onerror=alert(1)>',
        "https://example.com/'onmouseover='alert(1)",
        "https://example.com/<script>alert(1)</script>",
        "https://example.com/&quot;onclick=&quot;alert(1)",
        'www.example.com/"style="x',
        "javascript:alert(1) https://example.com",
    ],
)
def test_markup_in_a_body_or_an_address_stays_text(body):
    html = render(body)
    # The only tags are the filter's own links and line breaks.
    tags = re.findall(r"<[^>]*>", html)
    assert all(re.fullmatch(rf'<a href="[^"<>]*" {A}>|</a>|<br>', t) for t in tags), tags
    assert "<script" not in html and "<img" not in html
    assert all(h.lower().startswith(("http://", "https://")) for h in hrefs(html))
    # What a reader sees is what was written.
    assert (
        re.sub(r"<[^>]*>", "", html)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
        == body
    )


def test_an_address_ends_at_a_quote_so_an_attribute_cannot_be_closed():
    html = render('https://example.com/"onmouseover="alert(1)')
    assert hrefs(html) == ["https://example.com/"]
    assert "onmouseover=&quot;alert(1)" in html


def test_the_filter_escapes_safe_strings_too():
    from django.utils.safestring import mark_safe

    assert chat_links(mark_safe("<b>x</b> https://e.example")) == (
        "&lt;b&gt;x&lt;/b&gt; " + link("https://e.example")
    )


def worst_bodies(length: int) -> dict[str, str]:
    """Bodies of `length` characters that cost the most rendered, links or not."""

    def fill(unit: str) -> str:
        return (unit * (length // len(unit) + 1))[:length]

    return {
        "quotes": '"' * length,
        "short links": fill("http://a "),
        "short www links": fill("www.a.b "),
        "links of ampersands": fill("http://a/" + "&" * 40 + " "),
        "links of apostrophes": fill("https://a/" + "'" * 40 + " "),
        "one long link of ampersands": "http://a/" + "&" * (length - 9),
        "links and line breaks": fill("http://a\n"),
        "emoji links": fill("http://\U0001f600 "),
        "link then quotes": "https://example.com " + '"' * (length - 20),
        "short mentions": fill("@a "),
        "mentions of apostrophes": fill("@" + "a" * 3 + " '"),
        "mentions and links": fill("@b http://a "),
        "one long mention": "@" + "x" * (length - 1),
    }


@pytest.mark.parametrize("length", [1, 12, 40, 300, settings.CHAT_MAX_MESSAGE_LENGTH])
def test_a_body_stays_within_its_size_bound_however_many_links(length):
    for name, body in worst_bodies(length).items():
        html = render(body)
        bound = BYTES_PER_CHARACTER * len(body) + LINK_ALLOWANCE
        assert len(html.encode()) <= bound, (name, len(html.encode()), bound)


def test_ordinary_messages_get_all_their_links():
    bodies = [
        "https://a.co",
        "www.a.io",
        "https://example.com/a/very/long/path/that/goes/on?and=on&and=on#and-on",
        "three: https://a.example/1 https://b.example/2 https://c.example/3 ok?",
    ]
    for body in bodies:
        html = render(body)
        assert html.count("<a ") == len(re.findall(r"https?://|www\.", body)), body


@pytest.mark.django_db
def test_a_message_full_of_links_fits_one_frame():
    """config.settings checks CHAT_MAX_FRAME_BYTES against CHAT_MAX_MESSAGE_LENGTH × 6 +
    1024: the worst body, with the longest username, in its websocket frame, fits that."""
    alice = make_user("a" * 150)
    conversation = make_conversation(alice)
    bound = settings.CHAT_MAX_MESSAGE_LENGTH * BYTES_PER_CHARACTER + 1024
    for i, (name, body) in enumerate(worst_bodies(settings.CHAT_MAX_MESSAGE_LENGTH).items()):
        message = Message(
            pk=10**12 + i,
            conversation=conversation,
            sender=alice,
            seq=10**9 + i,
            body=body,
            client_id="0b3a6f6e-5b0e-4a4e-9d0e-3c7f6f2d1a11",
            created_at=timezone.now(),
        )
        frame = fragments.ws_message(fragments.message_html(message))
        assert frame_bytes(frame) <= bound, (name, frame_bytes(frame), bound)


@pytest.mark.django_db
def test_the_message_template_links_its_body():
    alice = make_user()
    conversation = make_conversation(alice)
    message = Message.objects.create(
        conversation=conversation,
        sender=alice,
        seq=1,
        body="<i>look</i>: https://example.com/x?a=1&b=2\njavascript:alert(1)",
    )
    html = fragments.message_html(message)
    body = re.search(r'<p class="body">(.*)</p>', html, re.S).group(1)
    assert body == (
        "&lt;i&gt;look&lt;/i&gt;: "
        + link("https://example.com/x?a=1&amp;b=2")
        + "<br>javascript:alert(1)"
    )


# --- mentions -------------------------------------------------------------------------------


def mention(name: str) -> str:
    return f'<span class="mention" data-mention="{name}">@{name}</span>'


@pytest.mark.parametrize(
    ("body", "expected", "names"),
    [
        ("@bob", mention("bob"), ["bob"]),
        ("hi @bob.", "hi " + mention("bob") + ".", ["bob"]),
        ("hi @bob, @ann!", "hi " + mention("bob") + ", " + mention("ann") + "!", ["bob", "ann"]),
        ("(@a.b-c_d+e)", "(" + mention("a.b-c_d+e") + ")", ["a.b-c_d+e"]),
        ("line\n@bob", "line<br>" + mention("bob"), ["bob"]),
        ("@bob @bob", mention("bob") + " " + mention("bob"), ["bob"]),
        ("@Zoë", mention("Zoë"), ["Zoë"]),
        # an e-mail address, or `@` after a username's character, mentions nobody
        ("mail ann@example.com", "mail ann@example.com", []),
        ("x.@bob and x-@bob", "x.@bob and x-@bob", []),
        # nothing after the `@`
        ("@ alone, @. and @...", "@ alone, @. and @...", []),
        # inside a web address it is the address's
        (
            "https://example.com/@bob",
            link("https://example.com/@bob"),
            [],
        ),
        # a name's characters only: quotes and angle brackets end it, escaped as text
        (
            '@bob"><script>alert(1)</script>',
            mention("bob") + "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;",
            ["bob"],
        ),
        ("<@bob>", "&lt;" + mention("bob") + "&gt;", ["bob"]),
        ("&@bob", "&amp;" + mention("bob"), ["bob"]),
        ("@bob&amp;", mention("bob") + "&amp;amp;", ["bob"]),
        ('@"bob"', "@&quot;bob&quot;", []),
        ("@\u202ebob", "@\u202ebob", []),
        ("@@bob", mention("@bob"), ["@bob"]),
        (
            "see @bob: http://a.co @ann",
            "see " + mention("bob") + ": " + link("http://a.co") + " " + mention("ann"),
            ["bob", "ann"],
        ),
    ],
)
def test_mentions_are_marked_and_everything_else_stays_escaped(body, expected, names):
    assert render(body) == expected
    assert mentioned_names(body) == list(dict.fromkeys(names))


def test_a_mention_never_produces_markup_but_its_span():
    hostile = [
        "@x onmouseover=alert(1)",
        "@x' data-x='1",
        '@x" onclick="y',
        "@<img src=x onerror=alert(1)>",
        "@x</span><script>",
        "@javascript:alert(1)",
        "@x\x00y",
    ]
    for body in hostile:
        html = render(body)
        tags = re.findall(r"<[^>]*>", html)
        assert all(
            re.fullmatch(r'<span class="mention" data-mention="[\w.@+\-]+">|</span>|<br>', t)
            for t in tags
        ), (body, html)
        assert "&amp;lt;" not in html and "&amp;quot;" not in html  # never escaped twice


def test_a_name_is_at_most_a_username_long():
    name = "n" * 200
    html = render("@" + name)
    assert mention("n" * 150) + "n" * 50 == html
    assert mentioned_names("@" + name) == ["n" * 150]


def test_text_without_an_at_sign_is_not_searched_for_mentions():
    assert mentioned_names("no mention here, just a@b") == []
    assert mentioned_names("") == []
