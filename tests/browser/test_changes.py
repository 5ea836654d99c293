"""Edits, deletes and changes of people, in real Chromium through nginx: each reaches every
open page live, in place, and survives a reload and a restart of every websocket process."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import open_pair, send, unique, wait_socket
from tests.browser.test_restart import RECONNECT_TIMEOUT_MS, SocketGate

pytestmark = pytest.mark.browser

MESSAGES = "#messages article.msg[data-seq]"


def _edit(page, message_id: str, text: str) -> None:
    page.locator(f"#{message_id} button[data-action=edit]").click()
    box = page.locator(f"#{message_id} form.edit-form textarea")
    expect(box).to_be_focused()
    box.fill(text)
    box.press("Enter")


def _delete(page, message_id: str) -> None:
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#{message_id} button[data-action=delete]").click()


def _sent(page, text: str) -> str:
    """Sends `text` and returns its message's element id once stored."""
    send(page, text)
    message = page.locator(MESSAGES, has_text=text)
    expect(message).to_have_count(1)
    return message.get_attribute("id")


def test_an_edit_and_a_delete_reach_the_other_page_in_place(pages, site):
    cid, ann, bob, _ = open_pair(pages, site)
    typo = _sent(ann, "teh quick fox")
    _sent(ann, "jumps over")
    expect(bob.locator(MESSAGES)).to_have_count(2)
    # Only the sender is offered Edit and Delete.
    expect(ann.locator(f"#{typo} .msg-actions button")).to_have_count(2)
    expect(bob.locator(".msg-actions")).to_have_count(0)

    _edit(ann, typo, "the quick fox")
    for page in (ann, bob):
        expect(page.locator(f"#{typo} .body")).to_have_text("the quick fox")
        expect(page.locator(f"#{typo} .edited")).to_have_text("(edited)")
        # In place: the order and the count are the conversation's.
        expect(page.locator(f"{MESSAGES} .body")).to_have_text(["the quick fox", "jumps over"])
    pages.shot(bob, "edited")

    _delete(ann, typo)
    for page in (ann, bob):
        expect(page.locator(f"#{typo}.deleted .body")).to_have_text("This message was deleted.")
        expect(page.locator(MESSAGES)).to_have_count(2)
    expect(ann.locator(f"#{typo} .msg-actions")).to_have_count(0)
    pages.shot(bob, "deleted")

    pages.goto(bob, f"/c/{cid}")
    wait_socket(bob)
    expect(bob.locator(f"#{typo}.deleted")).to_have_count(1)
    expect(bob.locator(f"{MESSAGES} .body")).to_have_text(
        ["This message was deleted.", "jumps over"]
    )
    assert "quick fox" not in bob.content()


def test_an_edit_refused_says_why_and_keeps_the_text(pages, site):
    _, ann, bob, _ = open_pair(pages, site)
    mine = _sent(ann, "keep me")
    ann.locator(f"#{mine} button[data-action=edit]").click()
    box = ann.locator(f"#{mine} form.edit-form textarea")
    box.fill("   ")
    box.press("Enter")
    expect(ann.locator("#chat-error")).to_contain_text("cannot be empty")
    expect(box).to_have_value("   ")
    box.press("Escape")
    expect(ann.locator(f"#{mine} .body")).to_have_text("keep me")
    expect(bob.locator(f"#{mine} .body")).to_have_text("keep me")
    pages.expect_console(r"\[ann\] console: Failed to load resource: .* 400 ")


def test_people_added_see_the_history_and_every_page_shows_who_came_and_went(pages, site):
    ann_name, bob_name, cat_name = unique("ann"), unique("bob"), unique("cat")
    people = site.users(ann_name, bob_name, cat_name)
    cid = site.conversation(ann_name, bob_name, messages=3, title=unique("team"))
    ann = pages.new_page("ann", people[ann_name]["session"])
    bob = pages.new_page("bob", people[bob_name]["session"])
    for page in (ann, bob):
        pages.goto(page, f"/c/{cid}")
        wait_socket(page)

    ann.locator(".add-people summary").click()
    ann.fill("#add_usernames", cat_name)
    ann.locator(".add-people button[type=submit]").click()
    wait_socket(ann)
    line = f"{ann_name} added {cat_name}"
    for page in (ann, bob):
        expect(page.locator("#messages article.msg.people")).to_contain_text([line])

    cat = pages.new_page("cat", people[cat_name]["session"])
    pages.goto(cat, f"/c/{cid}")
    wait_socket(cat)
    expect(cat.locator(f"{MESSAGES}:not(.people) .body")).to_have_text(
        [f"history message {i:03d}" for i in (1, 2, 3)]
    )
    send(cat, "hello all")
    expect(bob.locator(MESSAGES, has_text="hello all")).to_have_count(1)
    pages.shot(bob, "added")

    cat.locator("form.leave button").click()
    cat.wait_for_url("**/")
    for page in (ann, bob):
        expect(page.locator("#messages article.msg.people")).to_contain_text(
            [line, f"{cat_name} left"]
        )


def test_a_restart_of_every_websocket_process_loses_no_edit_or_delete(pages, site):
    cid, ann, bob, _ = open_pair(pages, site)
    pages.expect_console(
        r"console: WebSocket connection to "
        rf"'\S+/ws/(chat/{cid}\?after=\d+(&epoch=[0-9a-f]*)?|inbox\?since=\d+)' failed"
    )
    pages.expect_console(r"console: \[object Event\] \(\S+/static/chat/vendor/htmx-\S+\.js\)")
    first = _sent(ann, "first, to be edited")
    second = _sent(ann, "second, to be deleted")
    expect(bob.locator(MESSAGES)).to_have_count(2)

    # Bob's page cannot reconnect until we say so; Ann's comes back with the processes.
    gate = SocketGate(bob.context)
    gate.shut = True
    site.stop_ws()
    for page in (ann, bob):
        expect(page.locator("body")).not_to_have_attribute("data-socket", "open")
    # The changes go through the web tier while no websocket process runs.
    _edit(ann, first, "first, edited while the sockets were down")
    _delete(ann, second)
    expect(ann.locator("#chat-error")).to_have_text("")
    site.start_ws()
    expect(ann.locator("body")).to_have_attribute(
        "data-socket", "open", timeout=RECONNECT_TIMEOUT_MS
    )
    gate.shut = False
    expect(bob.locator("body")).to_have_attribute(
        "data-socket", "open", timeout=RECONNECT_TIMEOUT_MS
    )
    for page in (ann, bob):
        expect(page.locator(f"{MESSAGES} .body")).to_have_text(
            ["first, edited while the sockets were down", "This message was deleted."],
            timeout=RECONNECT_TIMEOUT_MS,
        )
        expect(page.locator(f"#{first} .edited")).to_have_count(1)
    pages.shot(bob, "after-restart")
