"""Accessibility: axe-core finds nothing serious or critical on the pages a person uses (log
in, sign up, the conversation list, a conversation with messages and a link), and a
screen reader is told about new messages, not about history loaded in bulk.

axe-core is vendored for the tests only (tests/browser/vendor/axe-core/README.md); the app
never serves it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import bodies, open_pair, send, unique, wait_socket, wait_until

pytestmark = pytest.mark.browser

AXE = Path(__file__).with_name("vendor") / "axe-core" / "axe.min.js"
FAILING_IMPACTS = ("serious", "critical")
LINK_MESSAGE = "The notes are at https://example.com/release-notes/2026?lang=en, have a look."
RUN_AXE = """async () => {
    const result = await axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map(v => ({
        id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map(n => ({ target: n.target.join(' '), summary: n.failureSummary })),
    }));
}"""


def axe_violations(page: Page) -> list[dict]:
    """axe's serious and critical violations on the page as it is now.

    The site's Content-Security-Policy (script-src 'self') blocks an inline <script>, which
    is what `page.add_script_tag(path=...)` inserts; Playwright's evaluate runs through the
    DevTools protocol, which CSP does not govern, so axe goes in that way and the page keeps
    its real policy for the test."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    found = page.evaluate(RUN_AXE)
    return [v for v in found if v["impact"] in FAILING_IMPACTS]


def assert_no_serious_violations(page: Page, where: str) -> None:
    violations = axe_violations(page)
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        lines.extend(f"    {n['target']}: {n['summary']}" for n in v["nodes"])
    assert not violations, f"axe on {where}:\n" + "\n".join(lines)


def test_login_and_sign_up_pages_pass_axe(pages):
    page = pages.new_page("visitor")
    pages.goto(page, "/accounts/login/")
    assert_no_serious_violations(page, "the login page")
    page.fill("#id_username", "nobody-at-all")
    page.fill("#id_password", "wrong password")
    page.click("main button[type=submit]")
    expect(page.locator(".form-error")).to_be_visible()
    assert_no_serious_violations(page, "the login page with its error")
    pages.goto(page, "/accounts/signup/")
    pages.expect_console(r"status of 400 .*/accounts/signup/")  # the form's errors
    assert_no_serious_violations(page, "the sign-up page")
    page.fill("#id_username", "x")
    page.fill("#id_password1", "short")
    page.fill("#id_password2", "other")
    page.click("main button[type=submit]")
    expect(page.locator(".errorlist").first).to_be_visible()
    assert_no_serious_violations(page, "the sign-up page with its errors")


def test_conversation_list_and_conversation_pass_axe(pages, site):
    cid, ann, bob, people = open_pair(pages, site)
    send(ann, LINK_MESSAGE)
    send(bob, "Thanks!\nSecond line, and a very long word: " + "x" * 120)
    expect(ann.locator("#messages article.msg[data-seq]")).to_have_count(2)
    link = ann.locator("#messages article.msg a").first
    expect(link).to_have_attribute("href", "https://example.com/release-notes/2026?lang=en")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(link).to_have_attribute("target", "_blank")
    assert_no_serious_violations(ann, "a conversation (the sender)")
    assert_no_serious_violations(bob, "a conversation (the recipient)")
    pages.shot(bob, "conversation")

    # Ann's list, with a second conversation and an unread count: her page has marked the
    # two messages read on the server before she leaves it (it sends its marker 0.5 s after
    # the last message arrives).
    ann_name, cat_name = next(iter(people)), unique("cat")
    wait_until(lambda: site.read_marker(cid, ann_name) == 2, what="Ann's read marker")
    site.users(cat_name)
    site.conversation(ann_name, cat_name, messages=3, title="Weekend plans")
    pages.goto(ann, "/")
    wait_socket(ann)
    send(bob, "One more thing")
    expect(ann.locator(f"#conv-{cid} .unread")).to_have_text("1")
    assert_no_serious_violations(ann, "the conversation list")
    pages.expect_console(r"status of 400 .*/c/new")  # the form's error
    ann.fill("#id_usernames", "no-such-user-here")
    ann.click(".new-conv button[type=submit]")
    expect(ann.locator(".form-error")).to_be_visible()
    assert_no_serious_violations(ann, "the conversation list with a form error")


# Records, for every message the list gains, whether the list was a live region then.
WATCH_LIVE = """(() => {
    const watch = () => {
        window.liveAtInsert = [];
        const box = document.getElementById('messages');
        new MutationObserver(records => { for (const r of records) {
            for (const n of r.addedNodes) {
                if (n.nodeType === 1 && n.matches('article.msg[data-seq]')) {
                    window.liveAtInsert.push(box.getAttribute('aria-live'));
                }
            }
        } }).observe(box, { childList: true });
    };
    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', watch);
    } else { watch(); }
})()"""
# The page as it would be had it seen only the first 4 messages: while the HTML is parsed
# (before chat.js reads it), the later ones go and the page's last sequence says 4.
SEEN_ONLY_FOUR = """new MutationObserver((records, obs) => { for (const r of records) {
    for (const n of r.addedNodes) {
        if (n.nodeType !== 1) { continue; }
        if (n.id === 'chat') { n.dataset.lastSeq = '4'; }
        if (n.matches('article.msg[data-seq]') && +n.dataset.seq > 4) { n.remove(); }
    }
} if (document.readyState !== 'loading') { obs.disconnect(); }
}).observe(document, { childList: true, subtree: true });"""


def live_at_insert(page: Page) -> list[str]:
    return page.evaluate("() => window.liveAtInsert")


def test_one_new_message_is_announced_by_the_log(pages, site):
    cid, ann, bob, _ = open_pair(pages, site, on_page=lambda p: p.evaluate(WATCH_LIVE))
    log = bob.locator("#messages")
    expect(log).to_have_attribute("role", "log")
    expect(log).to_have_attribute("aria-live", "polite")
    expect(log).to_have_attribute("aria-label", "Messages")
    send(ann, "one new message")
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(1)
    assert bodies(bob) == ["one new message"]
    assert live_at_insert(bob) == ["polite"]
    assert bob.evaluate("() => document.getElementById('messages').getAttribute('aria-live')") == (
        "polite"
    )


def test_a_catch_up_goes_in_silently_and_is_summed_up(pages, site):
    """A page that missed 6 messages (as after a reconnect) is replayed them in one go: the
    log is silent meanwhile, the status line says how many came, then the log speaks
    again."""
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    cid = site.conversation(ann_name, bob_name, messages=10)
    bob = pages.new_page("bob", people[bob_name]["session"])

    bob.add_init_script(SEEN_ONLY_FOUR)
    bob.add_init_script(WATCH_LIVE)
    pages.goto(bob, f"/c/{cid}")
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(10)
    expect(bob.locator("#chat-announce")).to_have_text("6 new messages")
    assert live_at_insert(bob) == ["off"] * 6
    expect(bob.locator("#messages")).to_have_attribute("aria-live", "polite")
    expect(bob.locator("#messages")).not_to_have_attribute("aria-busy", "true")


def test_older_messages_load_silently_and_the_focus_stays_in_the_list(pages, site):
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    cid = site.conversation(ann_name, bob_name, messages=60)  # a page is 50
    bob = pages.new_page("bob", people[bob_name]["session"])
    bob.add_init_script(WATCH_LIVE)
    pages.goto(bob, f"/c/{cid}")
    wait_socket(bob)
    older = bob.locator("#load-older")
    older.focus()
    bob.keyboard.press("Enter")
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(60)
    expect(bob.locator("#chat-announce")).to_have_text("10 older messages loaded")
    assert live_at_insert(bob) == ["off"] * 10
    expect(bob.locator("#messages")).to_have_attribute("aria-live", "polite")
    # The button is gone (nothing older): the focus is on the list, not lost to the page.
    expect(older).to_have_count(0)
    assert bob.evaluate("() => document.activeElement.id") == "messages"


def focused(page: Page) -> str:
    return page.evaluate("""() => { const e = document.activeElement;
        return e.id || e.getAttribute('aria-label') || e.textContent.trim(); }""")


def test_the_keyboard_reaches_every_control_and_sends(pages, site):
    cid, ann, bob, _ = open_pair(pages, site)
    send(bob, "see https://example.com/x")
    expect(ann.locator("#messages article.msg[data-seq]")).to_have_count(1)
    ann.locator("body").focus()
    ann.evaluate("() => document.activeElement.blur()")
    order = []
    for _ in range(16):
        ann.keyboard.press("Tab")
        order.append(focused(ann))
    # In this order (with others, such as a message's own buttons, between them).
    expected = [
        "Skip to content",
        "Parley",
        "Log out",
        "Leave this conversation",
        "messages",
        "https://example.com/x",
        "chat_message",
        "Send",
    ]
    found = [name for name in order if name in expected]
    assert found[: len(expected)] == expected, order
    # Nothing keeps the focus: Tab goes on past the last control and around again.
    assert "Skip to content" in found[len(expected) :], order

    # Every one of them shows where the focus is.
    ann.locator("#chat_message").focus()
    ann.keyboard.press("Shift+Tab")
    ring = ann.evaluate("""() => { const s = getComputedStyle(document.activeElement);
        return [s.outlineStyle, s.outlineWidth, s.outlineColor]; }""")
    assert ring == ["solid", "3px", "rgb(11, 61, 145)"], ring  # --focus

    # Enter sends; Shift+Enter starts a new line.
    box = ann.locator("#chat_message")
    box.focus()
    ann.keyboard.type("first line")
    ann.keyboard.press("Shift+Enter")
    ann.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    ann.keyboard.press("Enter")
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(2)
    assert bodies(bob)[-1] == "first line\nsecond line"
    expect(box).to_have_value("")
