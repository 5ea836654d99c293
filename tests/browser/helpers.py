"""Small page helpers shared by the browser tests."""

from __future__ import annotations

import itertools
import os
import re
import time

from playwright.sync_api import Page, expect

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
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def side(message) -> str:
    """Where a message bubble sits in the message list: left, right or center."""
    return message.evaluate("""m => {
        const b = m.getBoundingClientRect(), c = m.parentElement.getBoundingClientRect();
        const left = b.left - c.left, right = c.right - b.right;
        return Math.abs(left - right) < 4 ? 'center' : (left < right ? 'left' : 'right');
    }""")
