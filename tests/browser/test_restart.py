"""Every websocket process restarts under two open pages; nothing is lost or doubled."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import bodies, send, seqs, unique, wait_online, wait_socket

pytestmark = pytest.mark.browser

RECONNECT_TIMEOUT_MS = 20_000  # capped backoff (8 s) plus process start-up


def test_restart_every_websocket_process_mid_conversation(pages, site):
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    cid = site.conversation(ann_name, bob_name)
    ann = pages.new_page("ann", people[ann_name]["session"])
    bob = pages.new_page("bob", people[bob_name]["session"])
    for page in (ann, bob):
        pages.goto(page, f"/c/{cid}")
        wait_socket(page)
        # Survives only if the page is never reloaded.
        page.evaluate("() => { window.sameDocument = true; }")
    wait_online(ann, people[bob_name]["id"])
    send(ann, "before the restart")
    expect(bob.locator("#messages article.msg", has_text="before the restart")).to_have_count(1)

    # Each failed reconnect attempt is a console error, from Chromium and from htmx (its
    # htmx:wsError event); during this outage they are expected, and only these.
    pages.expect_console(rf"console: WebSocket connection to '\S+/ws/chat/{cid}\?after=\d+' failed")
    pages.expect_console(r"console: \[object Event\] \(\S+/static/chat/vendor/htmx-\S+\.js\)")

    # Bob's browser cannot reach the server until we say so: his socket stays down after
    # the restart while Ann writes.
    bob.context.set_offline(True)
    site.stop_ws()
    for page in (ann, bob):
        expect(page.locator("#conn-status")).to_have_text("Reconnecting…")
    wait_socket(ann, "closed")

    # Ann writes during the outage: the message waits in her page, visibly pending.
    send(ann, "written while the server was down")
    expect(ann.locator("#messages .msg.pending")).to_have_count(1)
    pages.shot(ann, "outage-pending")

    site.start_ws()
    expect(ann.locator("body")).to_have_attribute(
        "data-socket", "open", timeout=RECONNECT_TIMEOUT_MS
    )
    expect(ann.locator("#conn-status")).to_have_text("")
    expect(ann.locator("#messages .msg.pending")).to_have_count(0)
    send(ann, "written while Bob was away")
    expect(ann.locator("#messages article.msg[data-seq]")).to_have_count(3)
    expect(bob.locator("body")).not_to_have_attribute("data-socket", "open")
    pages.shot(bob, "bob-still-down")

    bob.context.set_offline(False)
    expect(bob.locator("body")).to_have_attribute(
        "data-socket", "open", timeout=RECONNECT_TIMEOUT_MS
    )
    expected = [
        "before the restart",
        "written while the server was down",
        "written while Bob was away",
    ]
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(3)
    for page in (ann, bob):
        assert bodies(page) == expected
        assert seqs(page) == [1, 2, 3]
        assert page.evaluate("() => window.sameDocument") is True
        expect(page.locator("#messages .msg.pending")).to_have_count(0)
    assert [body for _, _, body in site.messages(cid)] == expected

    # And the conversation simply goes on.
    send(bob, "all good here")
    expect(ann.locator("#messages article.msg", has_text="all good here")).to_have_count(1)
    pages.shot(bob, "after-restart")
