"""Mentions, unread counts in the title, browser notifications and muting, in real Chromium
through nginx.

Hiding a page: headless Chromium keeps every page "visible". Tried on Chromium 156, none of
these flips document.visibilityState: another page of the context brought to the front,
CDP Browser.setWindowBounds {windowState: "minimized"}, Target.createTarget with
background and Target.activateTarget, Page.setWebLifecycleState, and
Emulation.setFocusEmulationEnabled. So the init script below answers
document.visibilityState and document.hidden from a flag the test sets, and fires
visibilitychange as the browser would; everything else (the socket, the swap, the real
Notification constructor and the permission) is the browser's own.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import send, unique, wait_socket, wait_until

pytestmark = pytest.mark.browser

INIT = """(() => {
  let hidden = false;
  Object.defineProperty(Document.prototype, "visibilityState",
    { configurable: true, get() { return hidden ? "hidden" : "visible"; } });
  Object.defineProperty(Document.prototype, "hidden",
    { configurable: true, get() { return hidden; } });
  window.__setHidden = (h) => {
    hidden = h;
    document.dispatchEvent(new Event("visibilitychange"));
  };
  // Every real Notification the page makes, recorded; the constructor is wrapped, not
  // replaced: the browser still makes each one.
  window.__notifications = [];
  window.__permissionRequests = 0;
  const Real = window.Notification;
  if (!Real) { return; }
  function Recorded(title, options) {
    const n = new Real(title, options);
    const { body, tag } = options || {};
    window.__notifications.push({ title, body, tag });
    return n;
  }
  Recorded.prototype = Real.prototype;
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  Recorded.requestPermission = function () {
    window.__permissionRequests += 1;
    return Real.requestPermission.apply(Real, arguments);
  };
  window.Notification = Recorded;
})();"""

HIGHLIGHT = "rgb(255, 241, 184)"  # chat.js: a mention of the page's own user
NONE = "rgba(0, 0, 0, 0)"


def person(pages, site, who: str, session: str, grant: bool = True):
    """A page for `who` with hiding and recorded notifications; `grant`: the browser already
    allows this site's notifications (the person said yes earlier)."""
    page = pages.new_page(who, session)
    page.context.add_init_script(INIT)
    if grant:
        page.context.grant_permissions(["notifications"], origin=site.base_url)
    return page


def notifications(page) -> list[dict]:
    return page.evaluate("window.__notifications")


def hide(page, hidden: bool = True) -> None:
    page.evaluate("h => window.__setHidden(h)", hidden)


def turn_on_notifications(page) -> None:
    toggle = page.locator("#notify-toggle")
    expect(toggle).to_have_text("Turn on notifications")
    toggle.click()
    expect(toggle).to_have_text("Turn off notifications")
    expect(toggle).to_have_attribute("aria-pressed", "true")


def favicon(page) -> str:
    return page.eval_on_selector("#favicon", "e => e.getAttribute('href')")


def background(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor")


def test_a_mention_is_highlighted_for_its_person_only_and_marks_their_list(pages, site):
    ann_name, bob_name, cy_name = unique("ann"), unique("bob"), unique("cy")
    people = site.users(ann_name, bob_name, cy_name)
    cid = site.conversation(ann_name, bob_name, cy_name, title=unique("plans"))
    ann = person(pages, site, "ann", people[ann_name]["session"])
    cy = person(pages, site, "cy", people[cy_name]["session"])
    bob = person(pages, site, "bob", people[bob_name]["session"])
    for page in (ann, cy):
        pages.goto(page, f"/c/{cid}")
        wait_socket(page)
    pages.goto(bob, "/")
    wait_socket(bob)
    row = bob.locator(f"#conv-{cid}")
    expect(row.locator(".mention-mark")).to_be_hidden()
    expect(bob).to_have_title("Conversations · Parley")

    send(ann, f"look @{bob_name}, not you {cy_name}@example.com")
    mention = f'.mention[data-mention="{bob_name}"]'
    for page in (ann, cy):
        expect(page.locator(f"#messages {mention}")).to_have_text(f"@{bob_name}")
        assert background(page, f"#messages {mention}") == NONE
    expect(cy.locator("#messages .mention")).to_have_count(1)  # not the e-mail address
    # Bob's list: the live row, then his own row marked once the mention is stored.
    expect(row).to_have_class("conv-row has-unread has-mention")
    expect(row.locator(".mention-mark")).to_be_visible()
    expect(bob).to_have_title("(1) Conversations · Parley")
    assert "favicon-unread" in favicon(bob)
    pages.shot(bob, "list-marked")
    pages.goto(bob, "/")
    expect(row.locator(".mention-mark")).to_be_visible()
    expect(bob).to_have_title("(1) Conversations · Parley")

    # Opening it: highlighted for Bob, and read, so the list is not marked any more.
    pages.goto(bob, f"/c/{cid}")
    wait_socket(bob)
    expect(bob.locator(f"#messages {mention}")).to_be_visible()
    assert background(bob, f"#messages {mention}") == HIGHLIGHT
    pages.shot(bob, "highlighted")
    pages.goto(bob, "/")
    expect(row.locator(".mention-mark")).to_be_hidden()
    expect(bob).to_have_title("Conversations · Parley")
    assert "favicon-unread" not in favicon(bob)


def test_a_hidden_conversation_counts_new_messages_in_its_title(pages, site):
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    title = unique("standup")
    cid = site.conversation(ann_name, bob_name, title=title)
    ann = person(pages, site, "ann", people[ann_name]["session"])
    bob = person(pages, site, "bob", people[bob_name]["session"])
    for page in (ann, bob):
        pages.goto(page, f"/c/{cid}")
        wait_socket(page)
    send(ann, "seen at once")
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(1)
    expect(bob).to_have_title(f"{title} · Parley")
    hide(bob)
    send(ann, "one")
    send(ann, "two")
    expect(bob.locator("#messages article.msg[data-seq]")).to_have_count(3)
    expect(bob).to_have_title(f"(2) {title} · Parley")
    expect(ann).to_have_title(f"{title} · Parley")  # her own do not count
    hide(bob, False)
    expect(bob).to_have_title(f"{title} · Parley")


def test_notifications_are_off_until_asked_for_in_a_click(pages, site):
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    cid = site.conversation(ann_name, bob_name)
    ann = person(pages, site, "ann", people[ann_name]["session"])
    bob = person(pages, site, "bob", people[bob_name]["session"], grant=False)
    pages.goto(ann, f"/c/{cid}")
    pages.goto(bob, "/")
    wait_socket(ann)
    wait_socket(bob)
    toggle = bob.locator("#notify-toggle")
    expect(toggle).to_have_text("Turn on notifications")
    assert bob.evaluate("[window.__permissionRequests, Notification.permission]") == [
        0,
        "default",
    ]
    hide(bob)
    send(ann, "while notifications are off")
    expect(bob.locator(f"#conv-{cid} .preview")).to_contain_text("while notifications are off")
    bob.wait_for_timeout(300)
    assert notifications(bob) == []
    hide(bob, False)

    # Asked in the click: headless Chromium answers for a person who is never asked.
    toggle.click()
    wait_until(lambda: bob.evaluate("window.__permissionRequests") == 1, what="a request")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    # Allowed in the browser (its site settings): the click turns them on, and off again.
    bob.context.grant_permissions(["notifications"], origin=site.base_url)
    turn_on_notifications(bob)
    assert (
        bob.evaluate(f"localStorage.getItem('parley-notifications-{people[bob_name]['id']}')")
        == "on"
    )
    hide(bob)
    send(ann, "now you hear me")
    wait_until(lambda: notifications(bob), what="a notification")
    assert notifications(bob) == [
        {
            "title": f"{ann_name} in {ann_name}",
            "body": "now you hear me",
            "tag": f"parley-conversation-{cid}",
        }
    ]
    hide(bob, False)
    bob.locator("#notify-toggle").click()
    expect(toggle).to_have_text("Turn on notifications")
    hide(bob)
    send(ann, "quiet again")
    expect(bob.locator(f"#conv-{cid} .preview")).to_contain_text("quiet again")
    bob.wait_for_timeout(300)
    assert len(notifications(bob)) == 1


def test_a_muted_conversation_notifies_only_of_a_mention_and_two_tabs_notify_once(pages, site):
    ann_name, bob_name = unique("ann"), unique("bob")
    people = site.users(ann_name, bob_name)
    title = unique("noisy")
    cid = site.conversation(ann_name, bob_name, title=title)
    ann = person(pages, site, "ann", people[ann_name]["session"])
    bob = person(pages, site, "bob", people[bob_name]["session"])
    pages.goto(bob, "/")
    turn_on_notifications(bob)
    # Bob's second tab, on the conversation: same browser, same storage.
    bob_chat = bob.context.new_page()
    pages.watch(bob_chat, "bob-chat")
    pages.goto(ann, f"/c/{cid}")
    pages.goto(bob_chat, f"/c/{cid}")
    wait_socket(ann)
    wait_socket(bob_chat)
    wait_socket(bob)

    # Not muted, both tabs hidden: one notification for one message, from one of them.
    hide(bob)
    hide(bob_chat)
    send(ann, "hello both tabs")
    for page in (bob, bob_chat):
        expect(page.locator("body")).to_contain_text("hello both tabs")
    wait_until(lambda: notifications(bob) + notifications(bob_chat), what="a notification")
    bob.wait_for_timeout(500)
    both = notifications(bob) + notifications(bob_chat)
    assert [n["body"] for n in both] == ["hello both tabs"]
    assert both[0]["tag"] == f"parley-conversation-{cid}"

    # Muted from the conversation page: the list says so; a plain message notifies nobody.
    # (Both pages load again below: their records start afresh.)
    hide(bob_chat, False)
    bob_chat.locator("#mute-toggle").click()
    expect(bob_chat.locator("#mute-toggle")).to_have_text("Unmute")
    expect(bob_chat.locator("#chat")).to_have_attribute("data-muted", "true")
    wait_socket(bob_chat)
    pages.goto(bob, "/")
    wait_socket(bob)
    expect(bob.locator(f"#conv-{cid} .muted-label")).to_have_text("Muted")
    hide(bob)
    hide(bob_chat)
    send(ann, "plain news")
    for page in (bob, bob_chat):
        expect(page.locator("body")).to_contain_text("plain news")
    expect(bob.locator(f"#conv-{cid} .muted-label")).to_have_text("Muted")  # kept live
    bob.wait_for_timeout(500)
    assert notifications(bob) + notifications(bob_chat) == []

    # A mention notifies even so, once.
    send(ann, f"@{bob_name} this one is for you")
    expect(bob.locator(f"#conv-{cid} .mention-mark")).to_be_visible()
    wait_until(lambda: notifications(bob) + notifications(bob_chat), what="the mention")
    bob.wait_for_timeout(500)
    mentions = notifications(bob) + notifications(bob_chat)
    assert len(mentions) == 1
    assert "mentioned you" in mentions[0]["title"] and title in mentions[0]["title"]
    assert mentions[0]["tag"] == f"parley-conversation-{cid}"
    # The mention counts in the (hidden) conversation tab's title too.
    expect(bob_chat).to_have_title(f"(2) {title} · Parley")
