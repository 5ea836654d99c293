"""Small page helpers shared by the browser tests."""

from __future__ import annotations

import itertools
import os
import re

from playwright.sync_api import Page, expect

from tests.stack.harness import wait_until as harness_wait_until

_names = itertools.count(1)
_run = f"{os.getpid() % 10000}"

MINE_BG = "rgb(227, 237, 255)"  # --mine-bg in chat.css
THEIRS_BG = "rgb(241, 242, 244)"


def unique(prefix: str) -> str:
    return f"{prefix}{_run}x{next(_names)}"


def conversation_id(page: Page) -> int:
    match = re.search(r"/c/(\d+)$", page.url)
    assert match, f"not on a conversation page: {page.url}"
    return int(match.group(1))


def wait_online(page: Page, user_id: int, online: bool = True) -> None:
    expect(page.locator(f"#presence-{user_id}")).to_have_attribute(
        "data-online", "true" if online else "false"
    )


def wait_socket(page: Page, state: str = "open") -> None:
    """chat.js mirrors the socket's state on <body data-socket>: open, closed or refused."""
    expect(page.locator("body")).to_have_attribute("data-socket", state)


def send(page: Page, text: str) -> None:
    box = page.locator("#chat_message")
    box.fill(text)
    box.press("Enter")


def bodies(page: Page) -> list[str]:
    """Message texts in page order (confirmed messages only, not pending bubbles)."""
    return page.locator("#messages article.msg[data-seq] .body").all_inner_texts()


def seqs(page: Page) -> list[int]:
    return [
        int(s)
        for s in page.eval_on_selector_all(
            "#messages article.msg[data-seq]", "els => els.map(e => e.dataset.seq)"
        )
    ]


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    return harness_wait_until(predicate, timeout, what)


def open_pair(pages, site, on_page=None):
    """Ann and Bob, new, in a new conversation, both pages open with live sockets and Bob
    online for Ann. Returns (conversation id, ann's page, bob's page, people by name), people
    in that order."""
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    cid = site.conversation(ann_name, bob_name)
    ann = pages.new_page("ann", people[ann_name]["session"])
    bob = pages.new_page("bob", people[bob_name]["session"])
    for page in (ann, bob):
        pages.goto(page, f"/c/{cid}")
        wait_socket(page)
        if on_page is not None:
            on_page(page)
    wait_online(ann, people[bob_name]["id"])
    return cid, ann, bob, people


def side(message) -> str:
    """Where a message bubble sits in the message list: left, right or center."""
    return message.evaluate("""m => {
        const b = m.getBoundingClientRect(), c = m.parentElement.getBoundingClientRect();
        const left = b.left - c.left, right = c.right - b.right;
        return Math.abs(left - right) < 4 ? 'center' : (left < right ? 'left' : 'right');
    }""")
