"""Every websocket process restarts under two open pages; nothing is lost or doubled."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import (
    bodies,
    send,
    seqs,
    wait_online,
    wait_socket,
    wait_until,
)
from tests.browser.helpers import open_pair as open_restart_pair

pytestmark = pytest.mark.browser

RECONNECT_TIMEOUT_MS = 20_000  # capped backoff (8 s) plus process start-up

# Every status line a page shows, recorded as it changes: a restart may say "Reconnecting…",
# never "Reload the page".
RECORD_STATUS = """() => { window.sameDocument = true; window.statuses = []; window.gaps = [];
    let closedAt = null;
    document.body.addEventListener('htmx:wsClose', () => { closedAt = closedAt || Date.now(); });
    document.body.addEventListener('htmx:wsOpen', () => {
        if (closedAt) { window.gaps.push(Date.now() - closedAt); closedAt = null; } });
    new MutationObserver(() => window.statuses.push(
        document.getElementById('conn-status').textContent)
    ).observe(document.getElementById('conn-status'), { childList: true, subtree: true,
                                                         characterData: true }); }"""


class SocketGate:
    """Keeps a browser context's new websockets from reaching the server while shut.

    Chromium's offline emulation (`context.set_offline`) fails HTTP but not websockets
    (microsoft/playwright#4910): an "offline" page reconnected as soon as the server was
    back, at a moment set by its jittered backoff, and the test raced it. A shut gate
    answers each attempt itself with 1013 (try again later), which the page retries with
    backoff; an open one passes it on to the server untouched."""

    def __init__(self, *contexts) -> None:
        self.shut = False
        for context in contexts:
            context.route_web_socket(re.compile(r"/ws/"), self._route)

    def _route(self, ws) -> None:
        if self.shut:
            ws.close(code=1013, reason="offline")
        else:
            ws.connect_to_server()


def open_pair(pages, site):
    # sameDocument survives only if the page never reloads
    cid, ann, bob, people = open_restart_pair(
        pages, site, on_page=lambda page: page.evaluate(RECORD_STATUS)
    )
    ann_name, bob_name = people
    # Each failed reconnect attempt is a console error, from Chromium and from htmx (its
    # htmx:wsError event); while processes restart they are expected, and only these.
    pages.expect_console(
        r"console: WebSocket connection to "
        rf"'\S+/ws/(chat/{cid}\?after=\d+(&epoch=[0-9a-f]*)?|inbox\?since=\d+)' failed"
    )
    pages.expect_console(r"console: \[object Event\] \(\S+/static/chat/vendor/htmx-\S+\.js\)")
    return (
        cid,
        ann,
        bob,
        {
            "ann": people[ann_name] | {"name": ann_name},
            "bob": people[bob_name] | {"name": bob_name},
        },
    )


def assert_intact(site, cid, expected: list[str], *ann_and_bob) -> None:
    """Both pages show every expected message once, in the order the server stored them,
    in the page they started with."""
    for page in ann_and_bob:
        expect(page.locator("#messages article.msg[data-seq]")).to_have_count(
            len(expected), timeout=RECONNECT_TIMEOUT_MS
        )
    stored = [body for _, _, body in site.messages(cid)]
    assert sorted(stored) == sorted(expected)
    for page in ann_and_bob:
        assert bodies(page) == stored
        assert seqs(page) == list(range(1, len(expected) + 1))
        assert page.evaluate("() => window.sameDocument") is True
        expect(page.locator("#messages .msg.pending")).to_have_count(0)
        assert set(page.evaluate("() => window.statuses")) <= {"", "Reconnecting…"}


def test_restart_every_websocket_process_mid_conversation(pages, site):
    cid, ann, bob, people = open_pair(pages, site)
    ann_id, bob_id = people["ann"]["id"], people["bob"]["id"]
    send(ann, "before the restart")
    expect(bob.locator("#messages article.msg", has_text="before the restart")).to_have_count(1)
    # Bob also has the conversation list open, in another browser (opened once his
    # conversation page has marked the message read, so the list starts at zero).
    wait_until(lambda: site.read_marker(cid, people["bob"]["name"]) == 1, what="read marker")
    bob_list = pages.new_page("bob-list", people["bob"]["session"])
    pages.goto(bob_list, "/")
    wait_socket(bob_list)
    row = bob_list.locator(f"#conv-{cid}")
    expect(row.locator(".preview")).to_contain_text("before the restart")
    expect(row.locator(".unread")).to_have_text("")

    # Bob's browsers cannot reach the server until we say so: his sockets stay down after
    # the restart while Ann writes.
    bob_gate, bob_list_gate = SocketGate(bob.context), SocketGate(bob_list.context)
    bob_gate.shut = bob_list_gate.shut = True
    site.stop_ws()
    # Offline only once his pages have seen their sockets close: an offline context may
    # never pass a socket's close on to its page, which then shows it open for good.
    for page in (bob, bob_list):
        expect(page.locator("body")).not_to_have_attribute("data-socket", "open")
    bob.context.set_offline(True)
    bob_list.context.set_offline(True)
    for page in (ann, bob):
        expect(page.locator("#conn-status")).to_have_text("Reconnecting…")
    expect(ann.locator("body")).not_to_have_attribute("data-socket", "open")

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
    wait_online(ann, bob_id, online=False)

    # His list comes back first: it shows what it missed (the list socket replays nothing,
    # the page fetches its rows again).
    bob_list_gate.shut = False
    bob_list.context.set_offline(False)
    expect(row.locator(".preview")).to_contain_text(
        "written while Bob was away", timeout=RECONNECT_TIMEOUT_MS
    )
    expect(row.locator(".unread")).to_have_text("2")
    pages.shot(bob_list, "list-caught-up")

    bob_gate.shut = False
    bob.context.set_offline(False)
    expect(bob.locator("body")).to_have_attribute(
        "data-socket", "open", timeout=RECONNECT_TIMEOUT_MS
    )
    wait_online(bob, ann_id)
    wait_online(ann, bob_id)
    expect(row.locator(".unread")).to_have_text("")  # read in the conversation, live
    expected = [
        "before the restart",
        "written while the server was down",
        "written while Bob was away",
    ]
    assert_intact(site, cid, expected, ann, bob)

    # And the conversation simply goes on.
    send(bob, "all good here")
    assert_intact(site, cid, [*expected, "all good here"], ann, bob)
    pages.shot(bob, "after-restart")


def test_rolling_restart_moves_pages_to_the_other_process(pages, site):
    """A deploy restarts one daphne at a time: its pages move to the other one at once."""
    cid, ann, bob, _ = open_pair(pages, site)
    expected = []
    for i, name in enumerate(site.stack.ws_names):
        site.stack.kill_ws(i, wait=False)  # drain: its sockets get 1012 and reconnect
        for who, page in (("ann", ann), ("bob", bob)):
            text = f"{who} during the restart of {name}"
            send(page, text)
            expected.append(text)
        site.stack.wait_ws_exit(i)  # every socket it had is closed by now
        for page in (ann, bob):
            expect(page.locator("body")).to_have_attribute(
                "data-socket", "open", timeout=RECONNECT_TIMEOUT_MS
            )
        site.stack.spawn(name)
        site.stack.wait_healthy([name])
        assert_intact(site, cid, expected, ann, bob)
    gaps = {who: page.evaluate("() => window.gaps") for who, page in (("ann", ann), ("bob", bob))}
    print(f"\nrolling restart, socket down (ms) per page: {gaps}")
    assert sum(len(g) for g in gaps.values()) >= 2  # each restart moved at least one page
