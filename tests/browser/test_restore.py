"""A restore brings back an older history under open pages (issue: the new messages reused
sequence numbers the pages had shown, and nobody saw them until a reload). The pages start
over, by themselves, on both paths: an open socket (at its heartbeat) and a reconnect."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import bodies, open_pair, send, seqs, wait_socket, wait_until

pytestmark = pytest.mark.browser

START_OVER_TIMEOUT_MS = 20_000  # a heartbeat (CHAT_PRESENCE_TTL / 3) and a page load
MARK = "() => { window.sameDocument = true; }"


def ten_messages(ann, bob) -> list[str]:
    texts = [f"before the restore {i}" for i in range(1, 11)]
    for text in texts:
        send(ann, text)
        expect(ann.locator("#messages article.msg", has_text=text)).to_have_count(1)
    for page in (ann, bob):
        expect(page.locator("#messages article.msg[data-seq]")).to_have_count(10)
    return texts


def shows_exactly(page, expected: list[str]) -> None:
    expect(page.locator("#messages article.msg[data-seq]")).to_have_count(
        len(expected), timeout=START_OVER_TIMEOUT_MS
    )
    expect(page.locator("#messages article.msg", has_text=expected[-1])).to_have_count(
        1, timeout=START_OVER_TIMEOUT_MS
    )
    assert bodies(page) == expected
    assert seqs(page) == list(range(1, len(expected) + 1))
    expect(page.locator("#messages .msg.pending")).to_have_count(0)


def test_open_pages_start_over_when_the_history_went_back_unannounced(pages, site):
    """Rows after seq 5 deleted and last_seq set to 5, as restoring an older dump (or a
    failover to a replica that lagged) leaves them, and nobody ran history_new_epoch."""
    cid, ann, bob, _ = open_pair(pages, site)
    texts = ten_messages(ann, bob)
    for page in (ann, bob):
        page.evaluate(MARK)
    before = site.manage({"op": "rewind", "conversation": cid, "to_seq": 5})
    newer = [f"after the restore {i}" for i in range(1, 4)]
    for text in newer:
        send(ann, text)  # stored as seq 6, 7, 8: numbers both pages have shown already
    expected = texts[:5] + newer
    for page in (ann, bob):
        shows_exactly(page, expected)
        assert page.evaluate("() => window.sameDocument") is None  # it started over
        wait_socket(page)
    assert site.manage({"op": "epoch", "conversation": cid}) != before
    assert [body for _, _, body in site.messages(cid)] == expected  # each stored once
    # and the conversation goes on
    send(bob, "all good")
    for page in (ann, bob):
        shows_exactly(page, [*expected, "all good"])
    pages.shot(bob, "after-restore")


def test_a_reconnecting_page_starts_over_after_a_restore(pages, site):
    """`make restore` under open pages: the sockets drop, the older history comes back and
    history_new_epoch runs; each page reconnects with ?after=10&epoch=<old> (Bob's only
    after Ann has written three new messages)."""
    cid, ann, bob, _ = open_pair(pages, site)
    pages.expect_console(rf"console: WebSocket connection to '\S+/ws/chat/{cid}\?\S+' failed")
    pages.expect_console(r"console: \[object Event\] \(\S+/static/chat/vendor/htmx-\S+\.js\)")
    texts = ten_messages(ann, bob)
    for page in (ann, bob):
        page.evaluate(MARK)
    # The restore: web sockets down (as `make restore` stops ws), the older history, then
    # history_new_epoch. Bob stays offline a while longer.
    bob.context.set_offline(True)
    site.stop_ws()
    site.manage({"op": "rewind", "conversation": cid, "to_seq": 5})
    site.manage({"op": "new_epoch"})
    site.start_ws()
    # Ann's page reconnects with ?after=10&epoch=<old> and starts over.
    expect(ann.locator("#messages article.msg[data-seq]")).to_have_count(
        5, timeout=START_OVER_TIMEOUT_MS
    )
    assert ann.evaluate("() => window.sameDocument") is None
    wait_socket(ann)
    newer = [f"after the restore {i}" for i in range(1, 4)]
    for text in newer:
        send(ann, text)
    expected = texts[:5] + newer
    shows_exactly(ann, expected)
    bob.context.set_offline(False)
    shows_exactly(bob, expected)
    assert bob.evaluate("() => window.sameDocument") is None
    wait_until(lambda: bodies(bob) == expected, what="bob's page after the restore")
