"""On a phone (360 x 740, touch): nothing is wider than the screen, however long the names,
messages and addresses; the message form sits at the bottom of the screen; controls are
big enough to tap."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import send, unique, wait_online, wait_socket

pytestmark = pytest.mark.browser

PHONE = {
    "viewport": {"width": 360, "height": 740},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
TAP_PX = 44
LONG_URL = "https://example.com/" + "a-very-long-path-segment-" * 12 + "?q=" + "x" * 80
LONG_WORD = "Supercalifragilistic" * 8
LONG_TEXT = (
    "A long message that has to wrap over many lines on a phone, with ordinary words "
    "in it, so that the bubble grows downwards and never sideways. " * 3
)
TAPPABLE = "button, summary, input:not([type=hidden]), textarea, .topbar a, .pages a, .conv-row a"


def no_horizontal_scroll(page: Page) -> None:
    sizes = page.evaluate("""() => {
        const d = document.documentElement, m = document.getElementById('messages');
        return { page: [d.scrollWidth, d.clientWidth],
                 messages: m ? [m.scrollWidth, m.clientWidth] : [0, 0] };
    }""")
    for where, (scroll, client) in sizes.items():
        assert scroll <= client, f"{where} scrolls sideways: {scroll} px wide in {client} px"


def small_targets(page: Page) -> list[str]:
    """Visible controls less than TAP_PX high (inline links in text are exempt)."""
    return page.evaluate(
        """([selector, min]) => [...document.querySelectorAll(selector)].filter(e => {
            const r = e.getBoundingClientRect();
            return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden'
                && !e.closest('.sr-only') && r.height < min - 0.5;
        }).map(e => `${e.tagName.toLowerCase()}#${e.id} "${e.textContent.trim().slice(0, 30)}"
            ${Math.round(e.getBoundingClientRect().height)}px`)""",
        [TAPPABLE, TAP_PX],
    )


def test_a_conversation_fits_a_phone_and_keeps_its_form_at_the_bottom(pages, site):
    ann_name, bob_name = unique("ann") + "_with_a_rather_long_name", unique("bob")
    people = site.users(ann_name, bob_name)
    cid = site.conversation(ann_name, bob_name, title="Plans for the " + "very " * 12 + "long trip")
    bob = pages.new_page("bob", people[bob_name]["session"])
    pages.goto(bob, f"/c/{cid}")
    wait_socket(bob)
    ann = pages.new_page("ann-phone", people[ann_name]["session"], **PHONE)
    pages.goto(ann, f"/c/{cid}")
    wait_socket(ann)
    wait_online(ann, people[bob_name]["id"])

    for text in (LONG_TEXT, f"The link: {LONG_URL}", LONG_WORD, "Short one."):
        send(bob, text)
    send(ann, "Got it, thanks!\nSee " + LONG_URL)
    expect(ann.locator("#messages article.msg[data-seq]")).to_have_count(5)
    expect(ann.locator("#messages article.msg a[href]")).to_have_count(2)
    ann.locator("#chat_message").fill("typing on a phone")

    no_horizontal_scroll(ann)
    viewport = ann.viewport_size
    form = ann.locator("#message-form")
    expect(form).to_be_in_viewport(ratio=1)
    box = form.bounding_box()
    bottom = box["y"] + box["height"]
    assert viewport["height"] - 4 <= bottom <= viewport["height"], (box, viewport)
    # Nothing covers the text box: a tap in it lands on it.
    field = ann.locator("#chat_message").bounding_box()
    on_top = ann.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).id",
        [field["x"] + field["width"] / 2, field["y"] + field["height"] / 2],
    )
    assert on_top == "chat_message"
    assert not small_targets(ann), small_targets(ann)
    pages.shot(ann, "phone-conversation")

    # Scrolled back to the top of the history, the form is still where the thumb is.
    ann.locator("#messages").evaluate("m => { m.scrollTop = 0; }")
    expect(form).to_be_in_viewport(ratio=1)
    assert form.bounding_box()["y"] == box["y"]

    # Tapping Send works as Enter does.
    ann.locator("#message-form button[type=submit]").tap()
    expect(bob.locator("#messages article.msg", has_text="typing on a phone")).to_have_count(1)


def test_the_conversation_list_and_forms_fit_a_phone(pages, site):
    ann_name, bob_name = unique("ann") + "_with_a_rather_long_name", unique("bob")
    people = site.users(ann_name, bob_name)
    site.conversation(ann_name, bob_name, title="A title that is " + "really " * 10 + "long")
    bob = pages.new_page("bob", people[bob_name]["session"])
    other = site.conversation(ann_name, bob_name)
    pages.goto(bob, f"/c/{other}")
    wait_socket(bob)
    send(bob, "A preview that is far too long for a phone's width " * 4 + LONG_URL)

    ann = pages.new_page("ann-phone", people[ann_name]["session"], **PHONE)
    pages.goto(ann, "/")
    wait_socket(ann)
    expect(ann.locator("#conversation-list > li")).to_have_count(2)
    no_horizontal_scroll(ann)
    assert not small_targets(ann), small_targets(ann)
    pages.shot(ann, "phone-list")

    visitor = pages.new_page("visitor-phone", **PHONE)
    for path in ("/accounts/login/", "/accounts/signup/"):
        pages.goto(visitor, path)
        no_horizontal_scroll(visitor)
        assert not small_targets(visitor), (path, small_targets(visitor))
    pages.shot(visitor, "phone-signup")
