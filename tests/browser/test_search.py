"""Searching messages, and opening a result in its conversation."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import send, seqs, unique, wait_socket

pytestmark = pytest.mark.browser

TOTAL = 200  # seeded "history message NNN"
PAGE = 50  # CHAT_HISTORY_PAGE_SIZE default


def search_from_the_list(pages, page, words: str) -> None:
    pages.goto(page, "/")
    box = page.get_by_role("search").get_by_label("Search messages")
    box.fill(words)
    box.press("Enter")
    page.wait_for_url("**/search?q=*")


def test_search_a_word_open_the_hit_and_others_find_nothing(pages, site):
    ann_name, bob_name, eve_name = unique("ann"), unique("bob"), unique("eve")
    people = site.users(ann_name, bob_name, eve_name)
    cid = site.conversation(ann_name, bob_name, messages=TOTAL)
    site.conversation(bob_name, eve_name)  # eve shares a conversation with bob, not this one
    word = unique("quokka")

    ann = pages.new_page("ann", people[ann_name]["session"])
    pages.goto(ann, f"/c/{cid}")
    wait_socket(ann)
    send(ann, f"Look, a {word} on the beach")
    expect(ann.locator("#messages article.msg[data-seq]").last).to_have_attribute(
        "data-seq", str(TOTAL + 1)
    )

    # Found from the list page, the word highlighted; the hit opens the live newest page
    # with the message marked and in view.
    search_from_the_list(pages, ann, word)
    hits = ann.locator("#search-results .search-hit")
    expect(hits).to_have_count(1)
    expect(hits.locator("mark")).to_have_text(word)
    expect(hits.locator(".author")).to_have_text(ann_name)
    pages.shot(ann, "results")
    hits.locator("a").click()
    ann.wait_for_url(f"**/c/{cid}?around={TOTAL + 1}#msg-*")
    target = ann.locator("#messages article.msg-target")
    expect(target).to_have_count(1)
    expect(target).to_have_attribute("aria-current", "true")
    expect(target.locator(".body")).to_have_text(f"Look, a {word} on the beach")
    expect(target).to_be_in_viewport()
    wait_socket(ann)
    assert seqs(ann) == list(range(TOTAL + 2 - PAGE, TOTAL + 2))

    # An older message opens its own page of history: marked, in view, no socket, older
    # ones on demand and a way to the newest page.
    search_from_the_list(pages, ann, "message 100")
    expect(hits).to_have_count(1)
    expect(hits.locator("mark")).to_have_text(["message", "100"])
    hits.locator("a").click()
    ann.wait_for_url(f"**/c/{cid}?around=100#msg-*")
    target = ann.locator("#messages article.msg-target")
    expect(target.locator(".body")).to_have_text("history message 100")
    expect(target).to_be_in_viewport()
    assert seqs(ann) == list(range(100 + PAGE // 2 - PAGE + 1, 100 + PAGE // 2 + 1))
    expect(ann.locator("#chat-socket")).to_have_count(0)
    expect(ann.locator("#older-notice")).to_contain_text("You are viewing older messages")
    pages.shot(ann, "around")
    ann.locator("#load-older").click()
    expect(ann.locator("#messages article.msg[data-seq]")).to_have_count(2 * PAGE)
    assert seqs(ann) == list(range(100 + PAGE // 2 - 2 * PAGE + 1, 100 + PAGE // 2 + 1))
    ann.get_by_role("link", name="Jump to latest").click()
    ann.wait_for_url(f"**/c/{cid}")
    wait_socket(ann)
    assert seqs(ann)[-1] == TOTAL + 1

    # Eve is not in that conversation: the same words find nothing.
    eve = pages.new_page("eve", people[eve_name]["session"])
    for words in (word, "message 100"):
        search_from_the_list(pages, eve, words)
        expect(eve.locator(".search-count")).to_have_text("No messages found.")
        expect(eve.locator("#search-results")).to_have_count(0)
