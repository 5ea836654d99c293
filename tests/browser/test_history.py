"""Scrolling back through a long conversation."""

from __future__ import annotations

import math

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import send, seqs, unique, wait_socket

pytestmark = pytest.mark.browser

TOTAL = 200
PAGE = 50  # CHAT_HISTORY_PAGE_SIZE default


def test_scroll_back_through_200_messages_without_duplicates_or_gaps(pages, site):
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    cid = site.conversation(ann_name, bob_name, messages=TOTAL)
    ann = pages.new_page("ann", people[ann_name]["session"])
    pages.goto(ann, f"/c/{cid}")
    wait_socket(ann)
    box = ann.locator("#messages")
    expect(box.locator("article.msg[data-seq]")).to_have_count(PAGE)
    assert seqs(ann) == list(range(TOTAL - PAGE + 1, TOTAL + 1))
    expect(box.locator(f"article[data-seq='{TOTAL}']")).to_be_in_viewport()  # opens at the end

    loads = 0
    older = ann.locator("#load-older")
    while older.count():
        top = box.locator("article.msg[data-seq]").first
        top_seq = top.get_attribute("data-seq")
        box.evaluate("el => { el.scrollTop = 0; }")
        older.click()
        loads += 1
        expect(box.locator("article.msg[data-seq]").first).not_to_have_attribute(
            "data-seq", top_seq
        )
        # The reader keeps their place: what was at the top is still in view.
        expect(box.locator(f"article[data-seq='{top_seq}']")).to_be_in_viewport()
    assert loads == math.ceil((TOTAL - PAGE) / PAGE)
    assert seqs(ann) == list(range(1, TOTAL + 1))
    texts = box.locator("article.msg[data-seq] .body").all_inner_texts()
    assert texts == [f"history message {n:03d}" for n in range(1, TOTAL + 1)]
    pages.shot(ann, "oldest")

    # A live message while reading old ones lands at the end without yanking the view.
    bob = pages.new_page("bob", people[bob_name]["session"])
    pages.goto(bob, f"/c/{cid}")
    wait_socket(bob)
    scroll_before = box.evaluate("el => el.scrollTop")
    send(bob, "meanwhile, now")
    expect(box.locator("article.msg[data-seq]").last).to_have_attribute("data-seq", str(TOTAL + 1))
    assert box.evaluate("el => el.scrollTop") == scroll_before
    assert seqs(ann) == list(range(1, TOTAL + 2))
