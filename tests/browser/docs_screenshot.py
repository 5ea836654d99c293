"""Regenerates docs/screenshot-conversation.png, docs/screenshot-phone.png,
docs/screenshot-changes.png and docs/screenshot-search.png: `make docs-screenshot`.

A private stack (the browser tests' ports), two people chatting through the real UI, a
picture of one side of it, typing indicator included, then of the other side on a phone
(360 x 740, as tests/browser/test_phone.py) after a message with a link, and then of an
edit, a delete and someone added, as every page shows them, and of a search, from the page
of someone Bob mentioned.
"""

from __future__ import annotations

import sys

from playwright.sync_api import expect, sync_playwright

from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    SESSION_COOKIE,
    Site,
    browser_stack,
)
from tests.browser.helpers import send, wait_online, wait_socket

OUT = REPO / "docs" / "screenshot-conversation.png"
OUT_PHONE = REPO / "docs" / "screenshot-phone.png"
OUT_CHANGES = REPO / "docs" / "screenshot-changes.png"
OUT_SEARCH = REPO / "docs" / "screenshot-search.png"
PHONE = {
    "viewport": {"width": 360, "height": 740},
    "device_scale_factor": 1,
    "is_mobile": True,
    "has_touch": True,
}
LINK_MESSAGE = "Notes for today: https://example.com/releases/2026-12-05#websockets"
SCRIPT = [
    ("alice", "Morning! Did the deploy go out?"),
    ("bob", "It did, 09:12. Both websocket servers restarted one after the other."),
    ("alice", "And nobody noticed?"),
    ("bob", "Pages reconnected on their own and replayed what they missed. No duplicates."),
    ("alice", "Lovely. <b>Tags</b> still show up as plain text, too."),
]


def _changes(alice, bob) -> None:
    """Alice fixes a message and takes one back, then adds Carol: Bob's page changes in place."""
    bob.locator("#chat_message").fill("")
    mine = alice.locator("#messages article.msg[data-seq]", has_text="nobody noticed")
    mine.locator("button[data-action=edit]").click()
    box = mine.locator("form.edit-form textarea")
    box.fill("And nobody noticed at all?")
    box.press("Enter")
    expect(bob.locator("#messages .msg .edited")).to_have_count(1)
    tags = alice.locator("#messages article.msg[data-seq]", has_text="plain text")
    alice.once("dialog", lambda dialog: dialog.accept())
    tags.locator("button[data-action=delete]").click()
    expect(bob.locator("#messages .msg.deleted")).to_have_count(1)
    alice.locator(".add-people summary").click()
    alice.fill("#add_usernames", "carol")
    alice.locator(".add-people button[type=submit]").click()
    expect(bob.locator("#messages .msg.people")).to_have_count(1)


def main() -> int:
    stack = browser_stack()
    stack.start()
    site = Site(base_url=stack.url, env=stack.app_env(), stack=stack)
    try:
        people = site.users("alice", "bob", "carol")
        cid = site.conversation("alice", "bob", title="Release day")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            pages = {}
            for name, options in (
                ("alice", {"viewport": {"width": 900, "height": 640}}),
                ("bob", {"viewport": {"width": 900, "height": 640}}),
                ("bob-phone", PHONE),
            ):
                context = browser.new_context(base_url=stack.url, **options)
                context.add_cookies(
                    [
                        {
                            "name": SESSION_COOKIE,
                            "url": stack.url,
                            "value": people[name.split("-")[0]]["session"],
                        }
                    ]
                )
                page = context.new_page()
                page.goto(f"/c/{cid}")
                wait_socket(page)
                pages[name] = page
            wait_online(pages["alice"], people["bob"]["id"])
            for n, (name, text) in enumerate(SCRIPT, start=1):
                send(pages[name], text)
                expect(pages["alice"].locator("#messages article.msg[data-seq]")).to_have_count(n)
            # Bob types on, a key every 200 ms, until Alice sees it (typing is throttled).
            typing = pages["alice"].locator(".typing.active")
            for key in "Coffee? I'll bring some for everyone":
                pages["bob"].locator("#chat_message").press_sequentially(key, delay=200)
                if typing.count():
                    break
            expect(typing).to_be_visible()
            OUT.parent.mkdir(exist_ok=True)
            pages["alice"].screenshot(path=str(OUT))
            # On Bob's phone: Alice's link, and the form at the bottom.
            send(pages["alice"], LINK_MESSAGE)
            phone = pages["bob-phone"]
            expect(phone.locator("#messages article.msg a[href]")).to_have_count(1)
            phone.screenshot(path=str(OUT_PHONE))
            _changes(pages["alice"], pages["bob"])
            wait_online(pages["bob"], people["alice"]["id"])  # Alice's page is back after the add
            pages["bob"].screenshot(path=str(OUT_CHANGES))
            send(pages["bob"], "@alice the release notes mention websockets twice")
            alice = pages["alice"]
            expect(alice.locator(".mention")).to_have_count(1)
            alice.goto("/search?q=websockets")
            expect(alice.locator("mark").first).to_be_visible()
            alice.screenshot(path=str(OUT_SEARCH))
            browser.close()
    finally:
        site.close()
        stack.stop()
    print(f"wrote {OUT}, {OUT_PHONE}, {OUT_CHANGES} and {OUT_SEARCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
