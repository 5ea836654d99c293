"""Bad input in a real browser: too long, HTML, and a stranger at the door."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import bodies, open_pair, send, unique

pytestmark = pytest.mark.browser

LIMIT = 4000  # CHAT_MAX_MESSAGE_LENGTH default
XSS = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def test_too_long_message_shows_a_friendly_error_and_is_not_stored(pages, site):
    cid, ann, bob, _ = open_pair(pages, site)
    too_long = "x" * 5000
    send(ann, too_long)
    error = ann.locator("#chat-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(
        f"Message too long: 5000 characters, the limit is {LIMIT}. Shorten it and send again."
    )
    expect(ann.locator("#chat_message")).to_have_value(too_long)  # nothing lost
    expect(ann.locator("#messages .msg")).to_have_count(0)
    pages.shot(ann, "too-long")

    # A page whose limit is out of date sends it anyway: the server refuses, the bubble is
    # marked, and the text comes back into the box.
    ann.locator("#chat_message").evaluate("el => { el.dataset.maxLength = '0'; }")
    send(ann, too_long)
    expect(error).to_have_text(f"Message too long: 5000 characters, the limit is {LIMIT}.")
    expect(ann.locator("#messages .msg.pending.failed")).to_have_count(1)
    expect(ann.locator("#chat_message")).to_have_value(too_long)

    # Shortened, it goes through, and the error is gone.
    ann.locator("#chat_message").fill("x" * LIMIT)
    ann.locator("#chat_message").press("Enter")
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(1)
    expect(error).to_be_hidden()
    assert [(seq, len(body)) for seq, _, body in site.messages(cid)] == [(1, LIMIT)]


def test_html_in_a_message_renders_as_text(pages, site):
    cid, ann, bob, people = open_pair(pages, site)
    send(ann, XSS)
    for page in (ann, bob):
        expect(page.locator("#messages article.msg[data-seq]")).to_have_count(1)
        assert bodies(page) == [XSS]
        expect(page.locator("#messages img, #messages script")).to_have_count(0)
        assert page.evaluate("() => window.pwned") is None
    # The conversation list's preview is text too.
    pages.goto(bob, "/")
    expect(bob.locator(f"#conv-{cid} .preview")).to_contain_text(XSS[:40])
    expect(bob.locator("#conversation-list img")).to_have_count(0)
    assert bob.evaluate("() => window.pwned") is None
    pages.shot(ann, "html-as-text")


def test_non_participant_gets_a_404_page_and_a_refused_socket(pages, site):
    cid, ann, _, _ = open_pair(pages, site)
    send(ann, "private")
    expect(ann.locator("#messages article.msg[data-seq]")).to_have_count(1)
    eve_name = unique("eve")
    eve = pages.new_page("eve", site.users(eve_name)[eve_name]["session"])
    pages.expect_console(rf"\[eve\] console: Failed to load resource: .* 404 .*/c/{cid}\)")

    response = pages.goto(eve, f"/c/{cid}")
    assert response.status == 404
    expect(eve.locator("h1")).to_have_text("Not found")
    expect(eve.locator("body")).not_to_contain_text("private")
    pages.shot(eve, "404")

    # Her browser opens the socket by hand (same origin, her session): refused with 4403,
    # and nothing of the conversation comes through.
    outcome = eve.evaluate(
        """cid => new Promise(resolve => {
            const frames = [];
            const ws = new WebSocket(`ws://${location.host}/ws/chat/${cid}?after=0`);
            ws.onmessage = e => frames.push(e.data);
            ws.onclose = e => resolve({code: e.code, frames});
        })""",
        cid,
    )
    assert outcome == {"code": 4403, "frames": []}


def test_composer_enter_sends_shift_enter_breaks_line_blank_is_ignored(pages, site):
    cid, ann, bob, _ = open_pair(pages, site)
    ann.evaluate("() => { window.sameDocument = true; }")
    box = ann.locator("#chat_message")
    box.fill("   ")
    box.press("Enter")
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    box.press("Enter")
    message = bob.locator("#messages article.msg[data-seq]")
    expect(message).to_have_count(1)
    assert message.locator(".body").inner_text() == "first line\nsecond line"
    expect(box).to_have_value("")
    assert ann.evaluate("() => window.sameDocument") is True  # no form navigation
    assert [body for _, _, body in site.messages(cid)] == ["first line\nsecond line"]
