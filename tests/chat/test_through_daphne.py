"""What a page's socket gets through a real server (config.serve_ws: daphne and autobahn, on
both runtimes), where the test communicator sees nothing: autobahn applies
CHAT_MAX_FRAME_BYTES to what the server sends too, and closes a client's larger message.

The server here has small limits, so a bound is reached with few messages: messages of at
most 1,000 characters (6 bytes each at worst, escaped), websocket messages of at most 8 KiB,
catch-ups of at most 300 messages.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.helpers.daphne import ServeWs
from tests.stack.harness import wait_until

pytestmark = pytest.mark.slow

FRAME_LIMIT = 8192
LIMITS = {
    "CHAT_MAX_MESSAGE_LENGTH": "1000",
    "CHAT_MAX_FRAME_BYTES": str(FRAME_LIMIT),
    "CHAT_CATCH_UP_MAX_MESSAGES": "300",
    "CHAT_RATE_LIMIT": "100000",
    "CHAT_PRESENCE_TTL": "3",
    "LOG_LEVEL": "WARNING",
}
LONG = '"<&>' * 249  # 996 characters that escape to 4,482 bytes


@pytest.fixture(scope="module", params=["tuned", "stock"])
def server(request, tmp_path_factory):
    with ServeWs(tmp_path_factory.mktemp("serve_ws"), request.param, LIMITS) as server:
        yield server


def epoch_of(server: ServeWs, cookies: dict, conversation_id: int) -> str:
    page = requests.get(f"{server.base_url}/c/{conversation_id}", cookies=cookies, timeout=10)
    page.raise_for_status()
    return re.search(r'data-epoch="([^"]*)"', page.text)[1]


def sizes(sock) -> list[int]:
    return [len(frame.encode()) for frame in sock.frames]


def send_all(sock, texts: list[str]) -> None:
    """Sends `texts`, 25 at a time, each batch confirmed before the next (a burst of hundreds
    would be refused past capacity, which is not what these tests are about)."""
    for start in range(0, len(texts), 25):
        ids = {sock.send(text) for text in texts[start : start + 25]}
        sock.wait_client_ids(ids, timeout=30)


def test_a_page_far_behind_is_replayed_in_messages_under_the_frame_limit(server):
    """250 long messages behind (1.1 MB of fragments): sent in pieces under the limit, each
    message once and in order, and the socket stays open. Joined into one message, autobahn
    refused to send it and the socket closed with 1011, again on every reconnect."""
    alice, bob = server.seed(rooms=1, members=2, prefix="far")
    a = server.socket(alice).connect()
    send_all(a, [f"{i}:{LONG}" for i in range(250)])
    a.close()
    cookies = server.cookies(bob)
    b = server.socket(bob, cookies).connect(
        after=0, epoch=epoch_of(server, cookies, bob["conversation"])
    )
    try:
        b.wait_seq(250, timeout=30)
        b.quiet(0.5)
        assert b.seqs == list(range(1, 251))
        assert max(sizes(b)) <= FRAME_LIMIT and len(b.frames) > 100
        assert b.is_open
    finally:
        b.close()


def test_a_heal_past_the_frame_limit_is_cut_and_nothing_is_skipped(server):
    """Another process stores 60 long messages and never broadcasts them: this process's
    heartbeat finds them and reads them once for its sockets, sent in pieces under the limit
    (a batch over the limit was dropped after the socket had counted it as sent)."""
    alice, bob = server.seed(rooms=1, members=2, prefix="heal")
    b = server.socket(bob).connect()
    try:
        server.shell(
            "from django.contrib.auth import get_user_model\n"
            "from chat import services\n"
            f"u = get_user_model().objects.get(username={alice['username']!r})\n"
            "for i in range(60):\n"
            f"    services.message_create(conversation_id={alice['conversation']}, "
            f"sender=u, body=f'{{i}}:' + {LONG!r})\n"
        )
        b.wait_seq(60, timeout=20)  # a beat every second here
        b.quiet(0.5)
        assert b.seqs == list(range(1, 61))
        assert max(sizes(b)) <= FRAME_LIMIT
        assert b.is_open
    finally:
        b.close()


def test_a_page_behind_past_the_catch_up_bound_is_told_to_reload(server):
    """400 messages behind, with the bound at 300: no replay (the whole history was 115 MiB
    and 2 s of CPU for one handshake at 5,000 messages), the page reloads instead."""
    (_, bob) = server.seed(rooms=1, members=2, prefix="behind", messages=400)
    cookies = server.cookies(bob)
    epoch = epoch_of(server, cookies, bob["conversation"])
    for kwargs in ({"after": 0, "epoch": epoch}, {"after": 0}):
        b = server.socket(bob, cookies).connect(**kwargs)
        try:
            b.wait_text('id="chat-reset"')
            b.quiet(0.3)
            reset = next(f for f in b.frames if "chat-reset" in f)
            assert 'data-reason="behind"' in reset and f'data-epoch="{epoch}"' in reset
            assert b.seqs == []
        finally:
            b.close()
    b = server.socket(bob, cookies).connect(after=100, epoch=epoch)  # 300 behind: replayed
    try:
        b.wait_seq(400, timeout=20)
        assert b.seqs == list(range(101, 401))
    finally:
        b.close()


def test_a_big_room_s_presence_is_cut_under_the_frame_limit(server):
    """Thirty members with long names online: a newcomer is sent all of them, in pieces
    under the limit (joined, the thirty were one message over it, and the socket closed)."""
    members = server.seed(rooms=1, members=31, prefix="p" * 140)
    online = [server.socket(m).connect() for m in members[:30]]
    newcomer = server.socket(members[30]).connect()
    try:
        items = re.compile(r'<li id="presence-(\d+)"[^>]*data-online="true".*?</li>')

        def shown() -> dict[str, str]:
            return {m[1]: m[0] for f in newcomer.frames for m in items.finditer(f)}

        wait_until(lambda: len(shown()) >= 30, 15, "the thirty online members")
        assert sum(len(li.encode()) for li in shown().values()) > FRAME_LIMIT
        assert max(sizes(newcomer)) <= FRAME_LIMIT
        assert newcomer.is_open
    finally:
        for sock in [*online, newcomer]:
            sock.close()


def test_a_client_message_over_the_frame_limit_is_closed_with_1009(server):
    alice, _ = server.seed(rooms=1, members=2, prefix="big")
    a = server.socket(alice).connect()
    try:
        at_bound = json.dumps({"chat_message": "x" * 1000, "pad": "y" * 7000})
        at_bound += " " * (FRAME_LIMIT - len(at_bound))
        assert len(at_bound.encode()) == FRAME_LIMIT
        a.ws.send(at_bound)  # at the limit: read, and stored
        a.wait_seq(1)
        a.ws.send(at_bound + " ")  # one byte past it
        assert a.wait_close() == 1009
    finally:
        a.close()


def test_a_removed_participant_is_closed_with_4403_at_once(server):
    """Removed by another process (the admin, a service): closed at once, and a send racing
    the removal is refused by the store itself."""
    alice, bob = server.seed(rooms=1, members=2, prefix="gone")
    a, b = server.socket(alice).connect(), server.socket(bob).connect()
    try:
        started = time.monotonic()
        server.shell(
            "from chat import services\n"
            "from django.contrib.auth import get_user_model\n"
            f"u = get_user_model().objects.get(username={bob['username']!r})\n"
            f"services.participants_remove(conversation_id={bob['conversation']}, "
            "user_ids=[u.pk])\n"
        )
        assert b.wait_close(timeout=10) == 4403
        assert time.monotonic() - started < 10
        a.wait_client_ids({a.send("still here")})  # after "... removed" (seq 1)
        a.wait_seq(2)
        assert a.is_open
    finally:
        a.close()
        b.close()
    cookies = server.cookies(bob)
    again = server.socket(bob, cookies)
    again.connect()
    assert again.wait_close() == 4403  # and refused at the next handshake


def test_edits_and_deletes_reach_every_page_live_and_on_replay(server):
    """An edit and a delete made by another process (a web worker) reach both open pages in
    order, each under its own number; a page that reconnects from before them is replayed
    both, and the deleted text is never sent again."""
    alice, bob = server.seed(rooms=1, members=2, prefix="edit")
    a, b = server.socket(alice).connect(), server.socket(bob).connect()
    try:
        a.wait_client_ids({a.send("first draft")})
        b.wait_seq(1)
        pk = int(re.search(r'<article id="msg-(\d+)"', b.frames[-1])[1])
        change = (
            "from chat import services\n"
            "from django.contrib.auth import get_user_model\n"
            f"u = get_user_model().objects.get(username={alice['username']!r})\n"
            f"kw = dict(conversation_id={alice['conversation']}, message_id={pk})\n"
        )
        server.shell(change + "services.message_edit(editor=u, body='second draft', **kw)\n")
        for sock in (a, b):
            sock.wait_text('data-update-seq="2" data-seq="1"')
        assert "second draft" in b.frames[-1] and "(edited)" in b.frames[-1]
        server.shell(change + "services.message_delete(user=u, **kw)\n")
        for sock in (a, b):
            sock.wait_text('data-update-seq="3" data-seq="1"')
        assert "draft" not in b.frames[-1] and "This message was deleted." in b.frames[-1]
        assert a.is_open and b.is_open
    finally:
        a.close()
        b.close()
    cookies = server.cookies(bob)
    late = server.socket(bob, cookies).connect(
        after=0, epoch=epoch_of(server, cookies, bob["conversation"])
    )
    try:
        late.wait_text('data-update-seq="3"')
        replayed = "".join(late.frames)
        assert replayed.index('data-seq="1"') < replayed.index('data-update-seq="2"')
        assert replayed.index('data-update-seq="2"') < replayed.index('data-update-seq="3"')
        assert "draft" not in replayed
    finally:
        late.close()
