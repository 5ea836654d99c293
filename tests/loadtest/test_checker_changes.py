"""The delivery checker's edits, deletes, adds and leaves, without a stack: reading the
server's own change and people fragments, the page model applying them as chat.js does, the
checks of pages, changes and people against a database read, and the HTTP actions' retries
against a local server (the whole run: test_checker.py)."""

from __future__ import annotations

import http.server
import threading
import types
import uuid
from datetime import timedelta

import pytest
import requests
from django.contrib.auth import get_user_model
from django.utils import timezone

from chat import fragments as server_fragments
from chat.models import Message
from loadtest.checker import actions, fragments
from loadtest.checker.actions import Actor, Change
from loadtest.checker.check import (
    Db,
    PageState,
    Restore,
    Stored,
    check_changes,
    check_pages,
    check_people,
    valid_states,
)
from loadtest.checker.history import History
from loadtest.checker.page import Page, Send, ViewEntry

ANN = 7
CID = uuid.UUID("0c7a4c5e-8d4e-4b8e-9f4c-4a1e5c3e2b10")


def message(seq: int, body: str, *, pk: int | None = None, **kw) -> Message:
    return Message(
        pk=pk or 40 + seq,
        conversation_id=3,
        seq=seq,
        sender=get_user_model()(pk=ANN, username="ann"),
        body=body,
        client_id=kw.pop("client_id", CID),
        created_at=timezone.now(),
        **kw,
    )


def change(seq: int, kind: str, target: Message, body: str = "") -> Message:
    return Message(
        pk=900 + seq,
        conversation_id=3,
        seq=seq,
        sender=target.sender,
        kind=kind,
        body=body,
        target=target,
        created_at=timezone.now() + timedelta(seconds=1),
    )


def people(seq: int, kind: str, body: str) -> Message:
    return Message(
        pk=800 + seq,
        conversation_id=3,
        seq=seq,
        sender=get_user_model()(pk=ANN, username="ann"),
        kind=kind,
        body=body,
        created_at=timezone.now(),
    )


def frame(*entries: Message) -> str:
    return server_fragments.ws_message("".join(server_fragments.entry_html(e) for e in entries))


# --- reading the server's fragments -------------------------------------------------------


def test_an_edit_reads_as_the_message_now_under_the_changes_number():
    original = message(5, "teh fox")
    (read,) = fragments.parse_frame(
        frame(change(9, Message.EDIT, original, 'the "fox" & <co>'))
    ).articles
    assert (read.seq, read.update_seq, read.dom_id, read.cid) == (5, 9, "msg-45", str(CID))
    assert (read.body, read.edited, read.deleted, read.kind) == (
        'the "fox" & <co>',
        True,
        False,
        "message",
    )


def test_a_delete_reads_as_the_tombstone_with_no_text():
    (read,) = fragments.parse_frame(
        frame(change(10, Message.DELETE, message(5, "secret")))
    ).articles
    assert (read.seq, read.update_seq, read.body, read.deleted, read.edited) == (
        5,
        10,
        "",
        True,
        False,
    )
    # And a page's history shows it deleted, without the update's number.
    gone = message(5, "", deleted_at=timezone.now(), edited_at=timezone.now())
    (shown,) = fragments.articles(server_fragments.message_html(gone))
    assert (shown.update_seq, shown.body, shown.deleted, shown.edited) == (None, "", True, False)


def test_a_change_of_people_reads_as_its_line():
    (read,) = fragments.parse_frame(
        frame(people(6, Message.ADDED, "ann added bob & <eve>"))
    ).articles
    assert (read.seq, read.kind, read.body, read.update_seq, read.dom_id) == (
        6,
        "added",
        "ann added bob & <eve>",
        None,
        "msg-806",
    )


def test_a_confirmation_without_its_message_is_read():
    confirmed = server_fragments.confirmed_html(str(CID))
    assert fragments.parse_frame(confirmed).confirms == [str(CID)]


# --- the page model, as chat.js --------------------------------------------------------------


def page_model(**options) -> Page:
    run = types.SimpleNamespace(
        history=History(),
        o=types.SimpleNamespace(shallow=0.0, edit_p=0.0, delete_p=0.0, **options),
        sends={},
        epochs={},
        register_change=lambda c: None,
    )
    page = Page(run, "bob", "pw", 3, requests.Session(), 1)
    page.epoch = "e1"
    return page


def test_the_page_replaces_a_message_in_place_and_moves_on_once():
    page = page_model()
    first, second = message(1, "one"), message(2, "two", pk=50, client_id=None)
    page._on_frame(0.0, frame(first, second))
    page._on_frame(0.1, frame(change(3, Message.EDIT, first, "one, edited")))
    assert page.last_seq == 3 and page.seen == {1, 2, 3}
    assert [(v.seq, v.edited, v.body_hash) for v in page.view] == [
        (1, True, hash("one, edited")),
        (2, False, hash("two")),
    ]
    # The same change again (a replay) is at or below the position: dropped.
    page._on_frame(0.2, frame(change(3, Message.DELETE, first)))
    assert not page.view[0].deleted
    # A message and its delete in one frame (a catch-up): replaced within the frame.
    third = message(4, "three", pk=60, client_id=None)
    page._on_frame(0.3, frame(third, change(5, Message.DELETE, third)))
    assert [(v.seq, v.deleted, v.body_hash) for v in page.view][-1] == (4, True, hash(""))
    assert page.last_seq == 5 and len(page.view) == 3 and page.orphans == 0


def test_a_change_of_a_message_the_page_does_not_show_only_moves_it_on():
    page = page_model()
    page._on_frame(0.0, frame(message(1, "one")))
    old = message(0, "older than its history", pk=7)
    page._on_frame(
        0.1, frame(change(2, Message.EDIT, old, "new"), people(3, Message.LEFT, "eve left"))
    )
    assert page.last_seq == 3 and page.orphans == 1
    assert [(v.seq, v.kind) for v in page.view] == [(1, "message"), (3, "left")]


def test_a_page_that_left_expects_4403_and_a_page_that_did_not_is_dead():
    page = page_model()
    page.leaving = True
    page._on_close(1.0, 4403)
    assert page.left and page.dead and not page.reconnect_due
    other = page_model()
    other._on_close(1.0, 4403)
    assert other.left is None and other.dead == "closed with 4403"


def test_leaving_abandons_what_was_not_sent_yet():
    page = page_model()
    send = Send("c1", "bob", 3, "hi", hash("hi"), 2, 0.0)
    page.pending["c1"] = send
    leave = page.leave()
    page._handle(page.inbox.get_nowait())  # the command, on the page's thread
    assert page.leaving and send.abandoned and page.inflight == 1
    assert page.acts.get_nowait()[0] is leave


# --- the checks ------------------------------------------------------------------------------


def stored(seq: int, body: str, *, kind: str = "message", **kw) -> Stored:
    return Stored(
        seq,
        40 + seq,
        "ann",
        ANN,
        f"c{seq}" if kind == "message" else None,
        hash(body),
        len(body),
        kind,
        **kw,
    )


def db_with(*entries: Stored, deleted_texts: dict | None = None) -> Db:
    messages = {e.seq: e for e in entries if e.kind == "message"}
    others = {e.seq: e for e in entries if e.kind != "message"}
    return Db(
        epochs={1: "e1"},
        last_seqs={1: max(e.seq for e in entries)},
        messages={1: messages},
        others={1: others},
        deleted_texts={1: deleted_texts or {}},
    )


def viewed(seq: int, body: str, *, kind: str = "message", **kw) -> ViewEntry:
    return ViewEntry(
        seq,
        f"msg-{40 + seq}",
        ANN if kind == "message" else 0,
        f"c{seq}" if kind == "message" else None,
        hash(body),
        len(body),
        kind,
        **kw,
    )


def state(view, *, loaded_upto=0, seen=(), floor=0) -> PageState:
    return PageState(
        "bob",
        1,
        "e1",
        max([v.seq for v in view] + list(seen)),
        view,
        True,
        False,
        False,
        None,
        [],
        10.0,
        loaded_upto,
        floor,
        frozenset(seen),
    )


def kinds(failures) -> list[tuple[str, tuple]]:
    return [(f.kind, f.seqs) for f in failures]


# 1 edited (by 3), 2 deleted (by 4, its text was "gone"), 5 "ann added bob".
STREAM = (
    stored(1, "edited", edited=True, original_hash=hash("first")),
    stored(2, "", deleted=True, edited=True, original_hash=hash("second")),
    stored(3, "edited", kind="edit", target=41),
    stored(4, "", kind="delete", target=42),
    stored(5, "ann added bob", kind="added"),
)
GONE = {hash("second"): 2, hash("second, edited"): 2}
NOW = [
    viewed(1, "edited", edited=True),
    viewed(2, "", deleted=True),
    viewed(5, "ann added bob", kind="added"),
]


def test_a_page_that_followed_every_change_passes():
    db = db_with(*STREAM, deleted_texts=GONE)
    live = state(NOW, seen={1, 2, 3, 4, 5})  # all from its socket
    loaded = state(NOW, loaded_upto=5)  # all from a load: the changes are in the messages
    assert check_pages([live, loaded], db, "final") == []


def test_a_change_skipped_is_a_hole_and_a_stale_message_is_wrong():
    db = db_with(*STREAM, deleted_texts=GONE)
    stale = [viewed(1, "first"), *NOW[1:]]
    failures = check_pages([state(stale, seen={1, 2, 4, 5})], db, "final")
    assert kinds(failures) == [("holes", ((3, 3),)), ("wrong", ((1, 1),))]
    assert "1 edit" in failures[0].summary
    unmarked = [viewed(1, "edited"), *NOW[1:]]  # the text, not the "(edited)" marker
    assert kinds(check_pages([state(unmarked, loaded_upto=5)], db, "final")) == [
        ("wrong", ((1, 1),))
    ]


def test_a_deleted_text_shown_anywhere_fails():
    db = db_with(*STREAM, deleted_texts=GONE)
    ghost = [NOW[0], viewed(2, "second"), NOW[2]]
    assert kinds(check_pages([state(ghost, loaded_upto=5)], db, "final")) == [
        ("wrong", ((2, 2),)),
        ("deleted-shown", ((2, 2),)),
    ]


def test_people_lines_are_checked_once_in_order():
    db = db_with(*STREAM, deleted_texts=GONE)
    missing = state(NOW[:2], seen={1, 2, 3, 4})
    assert kinds(check_pages([missing], db, "final")) == [("holes", ((5, 5),))]
    other = [*NOW[:2], viewed(5, "ann added eve", kind="added")]
    assert kinds(check_pages([state(other, loaded_upto=5)], db, "final")) == [("wrong", ((5, 5),))]
    twice = [*NOW, NOW[2]]
    assert kinds(check_pages([state(twice, loaded_upto=5)], db, "final")) == [
        ("duplicates", ((5, 5),)),
        ("order", ((5, 5),)),
    ]


def test_a_page_not_scrolled_back_shows_from_its_floor_and_moves_past_older_changes():
    db = db_with(*STREAM, stored(6, "x", kind="edit", target=41), deleted_texts=GONE)
    db.others[1][6] = stored(6, "x", kind="edit", target=41)
    db.messages[1][1] = stored(1, "x", edited=True, original_hash=hash("first"))
    shallow = state(NOW[1:], loaded_upto=5, floor=2, seen={6})  # 1 is above its history
    assert check_pages([shallow], db, "final") == []


def edit(t: float, outcome: str, text: str = "edited") -> Change:
    c = Change("edit", "ann", 1, t, pk=41, seq=1, cid="c1", body_hash=hash(text), length=len(text))
    c.outcome = outcome
    return c


def delete(t: float, outcome: str) -> Change:
    c = Change("delete", "ann", 1, t, pk=41, seq=1, cid="c1")
    c.outcome = outcome
    return c


def sent() -> dict[str, Send]:
    return {"c1": Send("c1", "ann", 1, None, hash("first"), 5, 0.0)}


def test_valid_states_after_confirmed_and_unanswered_changes():
    first = ("text", hash("first"))
    assert valid_states(hash("first"), []) == {first}
    assert valid_states(hash("first"), [edit(1, "unknown")]) == {first, ("text", hash("edited"))}
    assert valid_states(
        hash("first"), [edit(1, "confirmed"), delete(2, "unknown"), edit(3, "unknown", "b")]
    ) == {
        ("text", hash("edited")),
        ("deleted",),
        ("text", hash("b")),
    }
    assert valid_states(hash("first"), [delete(1, "confirmed"), edit(2, "unknown")]) == {
        ("deleted",)
    }


def test_changes_are_checked_against_the_message_as_stored():
    edited = db_with(stored(1, "edited", edited=True, original_hash=hash("first")))
    assert check_changes([edit(1.0, "confirmed")], sent(), edited, [], "final") == []
    deleted = db_with(stored(1, "", deleted=True, original_hash=hash("first")))
    assert (
        check_changes(
            [edit(1.0, "confirmed"), delete(2.0, "unknown")], sent(), deleted, [], "final"
        )
        == []
    )
    # A confirmed delete the database does not have.
    lost = check_changes(
        [edit(1.0, "confirmed"), delete(2.0, "confirmed")], sent(), edited, [], "final"
    )
    assert [f.kind for f in lost] == ["change-lost"] and "delete confirmed" in lost[0].summary
    # The edited text without its marker.
    unmarked = db_with(stored(1, "edited", original_hash=hash("first")))
    assert [
        f.kind for f in check_changes([edit(1.0, "confirmed")], sent(), unmarked, [], "final")
    ] == ["edit-unmarked"]
    # A refusal nothing explains, and one a delete that may have been done explains.
    refused = check_changes(
        [edit(1.0, "refused")], sent(), db_with(stored(1, "first")), [], "final"
    )
    assert [f.kind for f in refused] == ["change-refused"]
    assert (
        check_changes([delete(1.0, "unknown"), edit(2.0, "refused")], sent(), deleted, [], "final")
        == []
    )
    # Changed before a restore: the dump may hold any state of it.
    restore = Restore(1, 0.5, 5.0, 6.0, 9.0, snapshot=set(), dump_last_seqs={1: 1})
    assert check_changes([delete(1.0, "confirmed")], sent(), edited, [restore], "final") == []


def people_change(kind: str, outcome: str, t: float = 1.0) -> Change:
    c = Change(kind, "ann" if kind == "add" else "bob", 1, t, guest="bob")
    c.outcome = outcome
    return c


def test_adds_and_leaves_are_in_the_stream_as_often_as_asked():
    both = db_with(stored(1, "ann added bob", kind="added"), stored(2, "bob left", kind="left"))
    asked = [people_change("add", "confirmed"), people_change("leave", "confirmed")]
    assert check_people(asked, both, [], "final") == []
    only_added = db_with(stored(1, "ann added bob", kind="added"))
    assert [f.kind for f in check_people(asked, only_added, [], "final")] == ["people"]
    # Never answered: there or not, both fine; but not twice for one ask.
    assert check_people([people_change("add", "unknown")], only_added, [], "final") == []
    twice = db_with(
        stored(1, "ann added bob", kind="added"), stored(2, "ann added bob", kind="added")
    )
    assert [f.kind for f in check_people(asked[:1], twice, [], "final")] == ["people"]


# --- the HTTP actions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "location", "answered", "outcome"),
    [
        ("edit", 204, "", None, "confirmed"),
        ("delete", 204, "", "maybe", "confirmed"),
        ("edit", 400, "", None, "refused"),
        ("edit", 503, "", None, None),
        ("edit", 500, "", None, None),
        ("add", 302, "/c/3", None, "confirmed"),
        ("add", 302, "/accounts/login/?next=/c/3/add", None, "refused"),
        ("leave", 302, "/", None, "confirmed"),
        ("leave", 404, "", None, "refused"),
        ("leave", 404, "", "maybe", "confirmed"),
    ],
)
def test_what_an_answer_means(kind, status, location, answered, outcome):
    assert actions.judge(kind, status, location, answered) == outcome


class Script(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a script of statuses ("drop": close without an answer)."""

    script: list = []
    posts: list = []

    def do_GET(self):  # noqa: N802
        body = b'<form><input name="csrfmiddlewaretoken" value="tok123"></form>'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        length = int(self.headers["Content-Length"])
        self.posts.append((self.path, self.headers["X-CSRFToken"], self.rfile.read(length)))
        answer = self.script.pop(0)
        if answer == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.send_response(answer)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(actions, "RETRY_BASE", 0.01)
    Script.posts = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Script)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_change_is_retried_after_a_503_and_no_answer_with_the_pages_csrf_token(server):
    Script.script = [503, "drop", 204]
    actor = Actor(server, server, requests.Session(), "1")
    c = Change("edit", "ann", 3, 0.0, pk=41)
    actor.post(c, "/c/3/m/41/edit", {"chat_message": "new"}, threading.Event())
    assert c.outcome == "confirmed" and c.attempts == 3
    assert c.statuses[0] == "503" and c.statuses[-1] == "204"
    assert {(path, token) for path, token, _ in Script.posts} == {("/c/3/m/41/edit", "tok123")}


def test_leaving_again_after_a_lost_answer_is_having_left(server):
    Script.script = ["drop", 404]
    actor = Actor(server, server, requests.Session(), "1")
    c = Change("leave", "bob", 3, 0.0, guest="bob")
    actor.post(c, "/c/3/leave", {}, threading.Event())
    assert c.outcome == "confirmed"
    Script.script = [404]
    first = Change("leave", "bob", 3, 0.0, guest="bob")
    actor.post(first, "/c/3/leave", {}, threading.Event())
    assert first.outcome == "refused"


def test_a_load_not_scrolled_back_starts_at_the_newest_pages_first_entry():
    page = page_model()
    newest = fragments.parse_page(
        '<section id="chat" data-epoch="e1" data-last-seq="9"></section>'
        + server_fragments.message_html(message(8, "eight"))
        + server_fragments.message_html(message(9, "nine"))
        + '<button id="load-older" hx-get="/c/3/history?before=8">Older</button>'
        + '<input name="csrfmiddlewaretoken" value="tok">',
        conversation=True,
    )
    older = fragments.parse_page(server_fragments.message_html(message(7, "seven")), False)
    page.run_.base_url = ""
    page._get = lambda url, conversation: newest if conversation else older
    view, epoch, last, pages, floor = page._fetch_history(shallow=1.0)
    assert ([v.seq for v in view], last, pages, floor, newest.csrf) == ([8, 9], 9, 1, 8, "tok")
    view, _, _, pages, floor = page._fetch_history(shallow=0.0)
    assert ([v.seq for v in view], pages, floor) == ([7, 8, 9], 2, 0)
    # A reader whose page is offline (the network gone) does not reload it.
    page.offline = True
    page.reload_by_reader()
    assert not [e for e in page.history.events if e.kind == "reload"]
