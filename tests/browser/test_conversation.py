"""Sign-up, a first conversation, typing and presence, and live unread counts."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import (
    MINE_BG,
    THEIRS_BG,
    bodies,
    conversation_id,
    open_pair,
    send,
    side,
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
    pages.goto(bob, "/")
    expect(bob.locator("#conversation-list li.empty")).to_be_visible()
    wait_socket(bob)

    # Ann signs up, logs out and in again, and starts a conversation with Bob.
    ann = pages.new_page("ann")
    password = "A-strong pass phrase 42"
    pages.goto(ann, "/accounts/signup/")
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
    assert side(theirs) == "left"
    assert (
        theirs.evaluate("m => getComputedStyle(m.querySelector('.author'), '::after').content")
        == "none"
    )

    mine = ann.locator("#messages article.msg[data-seq]", has_text="Hello Bob! First message.")
    expect(mine).to_have_count(1)
    expect(mine).to_have_css("background-color", MINE_BG)
    assert side(mine) == "right"
    expect(ann.locator("#messages .msg.pending")).to_have_count(0)
    expect(ann.locator("#chat_message")).to_have_value("")
    assert bodies(bob) == bodies(ann) == ["Hello Bob! First message."]
    assert site.messages(cid) == [(1, ann_name, "Hello Bob! First message.")]
    pages.shot(ann, "sender")
    pages.shot(bob, "recipient")


def test_typing_and_presence_appear_and_clear(pages, site):
    cid, ann, bob, people = open_pair(pages, site)
    ann_name, _ = people
    ann_id = people[ann_name]["id"]
    wait_online(bob, ann_id)

    typing = bob.locator(f"#typing-{ann_id}")
    expect(typing).to_be_hidden()
    ann.locator("#chat_message").press_sequentially("Are you th")
    expect(typing).to_be_visible()
    expect(typing).to_have_text(f"{ann_name} is typing…")
    expect(ann.locator(f"#typing-{ann_id}")).to_be_hidden()  # nobody is told they type
    pages.shot(bob, "typing")

    # She pauses: the indicator goes away by itself.
    expect(typing).to_be_hidden(timeout=7000)
    # She types on and sends: the indicator goes as her message arrives.
    ann.locator("#chat_message").press_sequentially("ere?")
    expect(typing).to_be_visible()
    ann.locator("#chat_message").press("Enter")
    expect(bob.locator("#messages article.msg", has_text="Are you there?")).to_have_count(1)
    expect(typing).to_be_hidden(timeout=1000)

    # She leaves: Bob sees her go offline.
    ann.close()
    wait_online(bob, ann_id, online=False)
    expect(bob.locator(f"#presence-{ann_id}")).to_contain_text("(offline)")
    pages.shot(bob, "offline")


def test_unread_counts_update_live_on_the_conversation_list(pages, site):
    ann_name, bob_name, cat_name = unique("ann"), unique("bob"), unique("cat")
    people = site.users(ann_name, bob_name, cat_name)
    with_ann = site.conversation(ann_name, bob_name, messages=1)
    with_cat = site.conversation(bob_name, cat_name, messages=1)

    bob = pages.new_page("bob", people[bob_name]["session"])
    pages.goto(bob, "/")
    wait_socket(bob)
    rows = bob.locator("#conversation-list > li")
    expect(rows.first).to_have_id(f"conv-{with_cat}")  # newest activity first
    ann_row = bob.locator(f"#conv-{with_ann}")
    expect(ann_row.locator(".unread")).to_have_text("")

    ann = pages.new_page("ann", people[ann_name]["session"])
    pages.goto(ann, f"/c/{with_ann}")
    wait_socket(ann)
    for n in (1, 2, 3):
        send(ann, f"news {n}")
        expect(ann_row.locator(".unread")).to_have_text(str(n))
        expect(ann_row.locator(".preview")).to_contain_text(f"news {n}")
        expect(rows.first).to_have_id(f"conv-{with_ann}")
    expect(rows).to_have_count(2)
    pages.shot(bob, "unread")

    cat = pages.new_page("cat", people[cat_name]["session"])
    pages.goto(cat, f"/c/{with_cat}")
    wait_socket(cat)
    send(cat, "from cat")
    cat_row = bob.locator(f"#conv-{with_cat}")
    expect(cat_row.locator(".unread")).to_have_text("1")
    expect(rows.first).to_have_id(f"conv-{with_cat}")

    # Bob reads Ann's conversation in another tab: the list clears that count live.
    reader = bob.context.new_page()
    pages.watch(reader, "bob-tab2")
    pages.goto(reader, f"/c/{with_ann}")
    expect(reader.locator("#messages article.msg[data-seq]")).to_have_count(4)
    expect(ann_row.locator(".unread")).to_have_text("")
    expect(ann_row).not_to_have_class("conv-row has-unread")
    expect(cat_row.locator(".unread")).to_have_text("1")
    # While he has it open, new messages are read as they arrive.
    send(ann, "news 4")
    expect(reader.locator("#messages article.msg", has_text="news 4")).to_have_count(1)
    expect(ann_row.locator(".preview")).to_contain_text("news 4")
    expect(ann_row.locator(".unread")).to_have_text("")


def test_a_page_that_loses_the_network_says_so_at_once(pages, site):
    """The browser knows it is offline before its socket does (an offline page may hear of a
    closed socket only seconds later): the status says so at once, and goes once the page
    is connected again; nothing sent meanwhile is lost."""
    cid, ann, bob, people = open_pair(pages, site)
    bob.context.set_offline(True)
    expect(bob.locator("#conn-status")).to_have_text("Reconnecting…", timeout=2000)
    expect(bob.locator("#conn-status")).to_have_attribute("data-kind", "warn")
    expect(ann.locator("#conn-status")).to_have_text("")
    send(ann, "while Bob was offline")
    bob.context.set_offline(False)
    expect(bob.locator("#conn-status")).to_have_text("", timeout=20_000)
    expect(bob.locator("body")).to_have_attribute("data-socket", "open")
    expect(bob.locator("#messages article.msg", has_text="while Bob was offline")).to_have_count(
        1, timeout=20_000
    )
