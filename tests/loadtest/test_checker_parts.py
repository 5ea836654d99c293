"""The delivery checker's parts that need no stack: reading the real fragments, the texts it
sends, the checks, and the folding of its history (the whole run: test_checker.py)."""

from __future__ import annotations

import random
import uuid

from django.contrib.auth import get_user_model
from django.template.loader import get_template
from django.utils import timezone

from chat import fragments as server_fragments
from chat.models import Message
from loadtest.checker import fragments
from loadtest.checker.bodies import Bodies
from loadtest.checker.check import Db, Failure, PageState, Restore, Stored, check_pages, check_sends
from loadtest.checker.history import Event, collapse, ranges
from loadtest.checker.page import Send, ViewEntry

TEXT = "a \"quoted\" <b>tag</b> & 'apostrophe'\nsecond line 漢字 😀👍🏽"


def rendered(seq: int, body: str, cid: uuid.UUID | None) -> str:
    user = get_user_model()(pk=7, username="ann")
    message = Message(
        pk=40 + seq,
        conversation_id=3,
        seq=seq,
        sender=user,
        body=body,
        client_id=cid,
        created_at=timezone.now(),
    )
    return get_template("chat/partials/message.html").render({"message": message})


def test_the_servers_message_and_error_fragments_read_back_as_sent():
    cid = uuid.uuid4()
    frame = (
        '<div hx-swap-oob="beforeend:#messages">'
        + rendered(5, TEXT, cid)
        + rendered(6, "x", None)
        + "</div>"
        + server_fragments.error_html("busy", client_id=str(cid), retry_after=2.5)
        + server_fragments.error_html("Your message could not be saved.", client_id=str(cid))
    )
    read = fragments.parse_frame(frame)
    assert [(a.seq, a.sender_id, a.cid, a.body) for a in read.articles] == [
        (5, 7, str(cid), TEXT),
        (6, 7, None, "x"),
    ]
    assert read.articles[0].dom_id == "msg-45"
    assert [(e.cid, e.retry_after) for e in read.errors] == [(str(cid), 2.5), (str(cid), None)]
    assert read.errors[1].text == "Your message could not be saved."
    assert read.reset is None


def test_a_body_with_links_reads_back_as_typed():
    text = (
        "see https://example.com/a?b=1&c='2' and www.example.org.\n<a href=x>not one</a>"
        ' @ck_r0_m1 <span class="mention">typed</span>'
    )
    read = fragments.parse_frame(rendered(8, text, None))
    assert "<a href=" in rendered(8, text, None)
    assert '<span class="mention" data-mention="ck_r0_m1">' in rendered(8, text, None)
    assert [a.body for a in read.articles] == [text]


def test_any_reset_is_read_whatever_its_attributes():
    plain = '<div id="chat-reset" hx-swap-oob="true" hidden data-epoch="ab12"></div>'
    assert fragments.parse_frame(plain).reset["data-epoch"] == "ab12"
    later = '<div data-reason="behind" id="chat-reset" data-epoch="ab12" hidden></div>'
    assert fragments.parse_frame(later).reset["data-reason"] == "behind"


def test_bodies_stay_within_the_limit_and_are_kept_as_they_are():
    bodies = Bodies(4000)
    rng = random.Random(1)
    texts = [bodies.body(rng, "ck_r0_m0") for _ in range(300)]
    assert all(0 < len(t) <= 4000 for t in texts)
    assert all(t == t.strip() and "\r" not in t for t in texts)
    assert any(len(t) == 4000 for t in texts)
    assert any(len(t.encode()) > 12000 for t in texts)  # escapes and multi-byte characters
    assert len(set(texts)) == len(texts)


def db(rows: dict[int, str | None], epoch: str = "e1") -> Db:
    return Db(
        epochs={1: epoch},
        last_seqs={1: max(rows, default=0)},
        messages={
            1: {s: Stored(s, 100 + s, "ann", 7, cid, hash(f"b{s}"), 2) for s, cid in rows.items()}
        },
    )


def page(view: list[int], *, open_for: float = 10.0, epoch: str = "e1") -> PageState:
    entries = [ViewEntry(s, f"msg-{100 + s}", 7, f"c{s}", hash(f"b{s}"), 2) for s in view]
    return PageState(
        "ann",
        1,
        epoch,
        max(view, default=0),
        entries,
        open_for > 0,
        False,
        False,
        None,
        [(1.0, 2.0, 1011)] * 3,
        open_for,
        loaded_upto=max(view, default=0),
    )


def kinds(failures: list[Failure]) -> list[tuple[str, tuple]]:
    return [(f.kind, f.seqs) for f in failures]


def test_a_page_is_checked_against_every_stored_message():
    stored = db({s: f"c{s}" for s in range(1, 8)})
    assert check_pages([page([1, 2, 3, 4, 5, 6, 7])], stored, "final") == []
    assert kinds(check_pages([page([1, 2, 5, 6, 7, 7])], stored, "final")) == [
        ("holes", ((3, 4),)),
        ("duplicates", ((7, 7),)),
        ("order", ((7, 7),)),
    ]
    flapping = check_pages([page([1, 2, 3, 4, 5, 6, 7], open_for=0.5)], stored, "final")
    assert kinds(flapping) == [("not-connected", ())]
    assert "its last 3 connections ended with 1011" in flapping[0].summary
    assert kinds(check_pages([page(list(range(1, 8)), epoch="e0")], stored, "final")) == [
        ("stale-epoch", ())
    ]


def send(cid: str, *, confirmed: float | None = None, refused: bool = False) -> Send:
    s = Send(cid, "ann", 1, None, hash("b1"), 2, 0.0)
    s.confirmed = (confirmed, 1, "e1") if confirmed is not None else None
    s.refused = (5.0, "could not be saved") if refused else None
    return s


def test_sends_are_checked_against_what_was_stored():
    stored = db({1: "c1"})
    restore = Restore(1, 3.0, 10.0, 11.0, 20.0, snapshot={"c1"}, dump_last_seqs={1: 1})
    assert check_sends([send("c1", confirmed=4.0)], stored, [], "final") == []
    # Confirmed, then lost to a restore of a dump taken before it: allowed.
    assert (
        check_sends(
            [send("c1", confirmed=4.0), send("c2", confirmed=9.0)], stored, [restore], "final"
        )
        == []
    )
    # Confirmed after the restore: it must be there.
    lost = check_sends(
        [send("c1", confirmed=4.0), send("c2", confirmed=12.0)], stored, [restore], "final"
    )
    assert [f.kind for f in lost] == ["confirmed-lost"]
    # Refused for good, yet stored: the lost-reply duplicate.
    assert [f.kind for f in check_sends([send("c1", refused=True)], stored, [], "final")] == [
        "refused-but-stored"
    ]
    assert [f.kind for f in check_sends([send("c1")], stored, [], "final")] == ["unconfirmed"]


def test_a_reconnect_loop_folds_into_one_block():
    events = []
    for i in range(6):
        t = float(i)
        events += [
            Event(t, "ann", "connect", "?after=12&epoch=e1"),
            Event(t + 0.1, "ann", "open", "after=12"),
            Event(t + 0.5, "ann", "close", f"1011, reconnect in 0.{i}s"),
        ]
    lines = collapse(events, limit=60)
    assert len(lines) == 4
    assert "the 3 lines above 5 times more" in lines[-1]


def test_ranges():
    assert ranges([5, 1, 2, 3, 7, 8]) == ((1, 3), (5, 5), (7, 8))


def test_a_network_drop_on_a_socket_already_closed_cuts_nothing_and_the_page_goes_on():
    """Two drops at one instant (soak seed 2812): the first one's 1006 had the reader close
    the socket, which websocket-client does by dropping ws.sock; the second found None and
    the page crashed, leaving it disconnected for the rest of the run."""
    import socket
    import types

    import requests
    import websocket

    from loadtest.checker.history import History
    from loadtest.checker.page import Conn, Page

    page = Page(types.SimpleNamespace(history=History()), "ann", "pw", 1, requests.Session(), 2812)
    ws = websocket.WebSocket()
    ws.sock, peer = socket.socketpair()
    page.conn = Conn(1, ws)
    page.drop()  # the network goes: the socket is cut
    assert peer.recv(1) == b""
    ws.shutdown()  # the reader's clean-up: websocket-client forgets the socket
    assert ws.sock is None
    page.drop()  # a second drop at the same instant
    assert [e.kind for e in page.history.events] == ["drop", "drop"]
    peer.close()
