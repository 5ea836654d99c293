"""Sign-up, a first conversation, typing and presence, and live unread counts."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import (
    MINE_BG,
    THEIRS_BG,
    bodies,
    conversation_id,
    send,
    unique,
    wait_online,
    wait_socket,
)

pytestmark = pytest.mark.browser

# Timestamps from the pages themselves (one browser, one clock): keydown in the sender's
# page, first appearance in the recipient's page.
MARK_SEND = """() => document.getElementById('chat_message').addEventListener('keydown',
    e => { if (e.key === 'Enter') { window.sentAt = Date.now(); } }, { once: true })"""
WATCH_FOR = """text => { window.seenAt = null; new MutationObserver((_, obs) => {
    for (const b of document.querySelectorAll('#messages article.msg[data-seq] .body')) {
      if (b.textContent === text) { window.seenAt = Date.now(); obs.disconnect(); return; }
    } }).observe(document.getElementById('messages'), { childList: true, subtree: true }); }"""


def test_sign_up_and_first_conversation(pages, site):
    bob_name, ann_name = unique("bob"), unique("ann")
    seeded = site.users(bob_name)[bob_name]
    bob_id = seeded["id"]
    bob = pages.new_page("bob", seeded["session"])
    bob.goto("/")
    expect(bob.locator("#conversation-list li.empty")).to_be_visible()
    wait_socket(bob)

    # Ann signs up, logs out and in again, and starts a conversation with Bob.
    ann = pages.new_page("ann")
    password = "A-strong pass phrase 42"
    ann.goto("/accounts/signup/")
    ann.fill("#id_username", ann_name)
    ann.fill("#id_password1", password)
    ann.fill("#id_password2", password)
    ann.click("button:has-text('Create account')")
    expect(ann.locator("h1")).to_have_text("Conversations")
    ann.click("button:has-text('Log out')")
    expect(ann.locator("h1")).to_have_text("Log in")
    ann.fill("#id_username", ann_name)
    ann.fill("#id_password", password)
    ann.click("main button:has-text('Log in')")
    expect(ann.locator(".whoami")).to_contain_text(ann_name)
    ann.fill("#id_usernames", bob_name)
    ann.click("button:has-text('Start')")
    ann.wait_for_url("**/c/*")
    cid = conversation_id(ann)
    wait_socket(ann)

    # Bob's list shows the new conversation without a reload; he opens it.
    row = bob.locator(f"#conv-{cid}")
    expect(row).to_contain_text(ann_name)
    row.locator("a").click()
    bob.wait_for_url(f"**/c/{cid}")
    wait_socket(bob)
    ann_id = int(ann.locator("body").get_attribute("data-user-id"))
    wait_online(ann, bob_id)
    wait_online(bob, ann_id)

    bob.evaluate(WATCH_FOR, "Hello Bob! First message.")
    ann.evaluate(MARK_SEND)
    send(ann, "Hello Bob! First message.")

    theirs = bob.locator("#messages article.msg", has_text="Hello Bob! First message.")
    expect(theirs).to_have_count(1, timeout=1000)
    latency_ms = bob.evaluate("() => window.seenAt") - ann.evaluate("() => window.sentAt")
    print(f"\nfirst message: Enter in one page to visible in the other: {latency_ms} ms")
    assert latency_ms < 1000
    expect(theirs).to_have_attribute("data-sender-id", str(ann_id))
    expect(theirs).to_have_css("background-color", THEIRS_BG)
    assert theirs.evaluate(
        "m => getComputedStyle(m.querySelector('.author'), '::after').content") == "none"

    mine = ann.locator("#messages article.msg[data-seq]", has_text="Hello Bob! First message.")
    expect(mine).to_have_count(1)
    expect(mine).to_have_css("background-color", MINE_BG)
    expect(ann.locator("#messages .msg.pending")).to_have_count(0)
    expect(ann.locator("#chat_message")).to_have_value("")
    assert bodies(bob) == bodies(ann) == ["Hello Bob! First message."]
    assert site.messages(cid) == [(1, ann_name, "Hello Bob! First message.")]
    pages.shot(ann, "sender")
    pages.shot(bob, "recipient")
