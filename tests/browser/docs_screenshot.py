"""Regenerates docs/screenshot-conversation.png and docs/screenshot-phone.png: `make
docs-screenshot`.

A private stack (the browser tests' ports), two people chatting through the real UI, a
picture of one side of it, typing indicator included, and then of the other side on a
phone (360 x 740, as tests/browser/test_phone.py), after a message with a link.
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


def main() -> int:
    stack = browser_stack()
    stack.start()
    site = Site(base_url=stack.url, env=stack.app_env(), stack=stack)
    try:
        people = site.users("alice", "bob")
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
            browser.close()
    finally:
        site.close()
        stack.stop()
    print(f"wrote {OUT} and {OUT_PHONE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
