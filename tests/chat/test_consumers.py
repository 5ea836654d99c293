"""chat.consumers (ChatConsumer, InboxConsumer) against the real Redis channel layer and
Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from chat import services
from chat.models import Message
from chat.presence import presence_store
from tests.factories import communicator, make_user, session_cookie
from tests.helpers.frames import Inbox
from tests.helpers.ws import open_socket, room, send, stored

pytestmark = pytest.mark.django_db(transaction=True)


# --- refusals -------------------------------------------------------------------------------


async def test_anonymous_is_closed_with_4401_and_gets_nothing():
    conversation, _, _ = await room()
    comm, connected, inbox = await open_socket(conversation.pk, cookie=None)
    assert connected  # accepted so the browser sees the code, not 1006
    assert await inbox.wait_close() == 4401
    assert inbox.frames == []


async def test_non_participant_and_missing_conversation_get_4403():
    conversation, _, _ = await room()
    outsider = await sync_to_async(make_user)()
    cookie = await sync_to_async(session_cookie)(outsider)
    for cid in (conversation.pk, 999_999):
        comm, connected, inbox = await open_socket(cid, cookie)
        assert connected
        assert await inbox.wait_close() == 4403
        assert inbox.frames == []


async def test_outsider_receives_nothing_from_the_conversation():
    conversation, _, cookies = await room()
    outsider = await sync_to_async(make_user)()
    cookie = await sync_to_async(session_cookie)(outsider)
    member, _, member_inbox = await open_socket(conversation.pk, cookies[0])
    intruder, _, intruder_inbox = await open_socket(conversation.pk, cookie)
    assert await intruder_inbox.wait_close() == 4403
    await send(member, "secret plans")
    await member_inbox.wait_text("secret plans")
    assert not any("secret" in f for f in intruder_inbox.frames)
    await member.disconnect()


async def test_foreign_origin_is_refused_at_the_handshake():
    conversation, _, cookies = await room()
    comm = communicator(f"/ws/chat/{conversation.pk}", cookies[0], origin=b"https://evil.example")
    connected, _ = await comm.connect(timeout=5)
    assert not connected


# --- chatting -------------------------------------------------------------------------------


async def test_two_participants_see_each_others_messages_in_order():
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    for i in range(5):
        await send(alice if i % 2 == 0 else bob, f"hello {i}")
        # wait for each before the next so the intended order is the sending order
        await alice_in.wait_seqs(list(range(1, i + 2)))
    await bob_in.wait_seqs([1, 2, 3, 4, 5])
    assert alice_in.seqs == [1, 2, 3, 4, 5]
    assert bob_in.seqs == [1, 2, 3, 4, 5]
    frame = next(f for f in bob_in.frames if "hello 0" in f)
    assert f'data-sender-id="{users[0].pk}"' in frame
    assert 'hx-swap-oob="beforeend:#messages"' in frame
    assert "<time datetime=" in frame
    assert [b for _, b in await stored(conversation.pk)] == [f"hello {i}" for i in range(5)]
    await alice.disconnect()
    await bob.disconnect()


async def test_every_recipient_gets_the_same_fragment_bytes():
    conversation, _, cookies = await room(3)
    socks = [await open_socket(conversation.pk, c) for c in cookies]
    await send(socks[0][0], "one fragment for all")
    frames = []
    for _, _, inbox in socks:
        frames.append(await inbox.wait_text("one fragment for all"))
    assert len(set(frames)) == 1
    for comm, _, _ in socks:
        await comm.disconnect()


async def test_xss_payloads_are_rendered_inert():
    conversation, _, cookies = await room()
    alice, _, _ = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    payloads = [
        '<img src=x onerror="alert(1)">',
        "<script>alert(2)</script>",
        '"><svg onload=alert(3)>',
        "</article><div hx-swap-oob='true' id='messages'>x</div>",
    ]
    for p in payloads:
        await send(alice, p)
    await bob_in.wait_seqs([1, 2, 3, 4])
    text = "".join(bob_in.frames)
    assert "<img" not in text and "<script" not in text and "<svg" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "hx-swap-oob='true'" not in text
    await alice.disconnect()
    await bob.disconnect()


async def test_bad_frames_get_an_error_and_the_socket_stays_open():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await alice.send_to(text_data="{not json")
    assert "Malformed message" in await alice_in.wait_text('id="chat-error"')
    alice_in.frames.clear()
    await alice.send_to(text_data=json.dumps({"something": "else"}))
    assert "chat_message field is missing" in await alice_in.wait_text('id="chat-error"')
    alice_in.frames.clear()
    await alice.send_to(bytes_data=b"\x00\x01binary")
    assert "Binary frames" in await alice_in.wait_text('id="chat-error"')
    alice_in.frames.clear()
    await alice.send_to(text_data=json.dumps([1, 2, 3]))
    assert "expected a JSON object" in await alice_in.wait_text('id="chat-error"')
    alice_in.frames.clear()
    await alice.send_to(text_data=json.dumps({"chat_message": "x", "client_id": "nope"}))
    assert "client_id must be a UUID" in await alice_in.wait_text('id="chat-error"')
    # still open and working
    await send(alice, "still here")
    await alice_in.wait_text("still here")
    assert await stored(conversation.pk) == [(1, "still here")]
    await alice.disconnect()


async def test_empty_messages_are_ignored():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await send(alice, "")
    await send(alice, "   \n\t ")
    await send(alice, "real")
    await alice_in.wait_text("real")
    assert await stored(conversation.pk) == [(1, "real")]
    assert not any("chat-error" in f for f in alice_in.frames)
    await alice.disconnect()


@override_settings(CHAT_MAX_MESSAGE_LENGTH=100)
async def test_too_long_message_errors_to_the_sender_only_and_is_not_stored():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    cid = str(uuid.uuid4())
    await send(alice, "x" * 101, client_id=cid)
    err = await alice_in.wait_text('id="chat-error"')
    assert "too long" in err and f'data-client-id="{cid}"' in err
    await send(alice, "x" * 100)
    await bob_in.wait_seqs([1])
    assert not any("chat-error" in f for f in bob_in.frames)
    assert await stored(conversation.pk) == [(1, "x" * 100)]
    await alice.disconnect()
    await bob.disconnect()


@override_settings(CHAT_RATE_LIMIT=5)
async def test_flooding_is_throttled_then_closed_and_others_are_unaffected():
    conversation, _, cookies = await room(3)
    flood, _, flood_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    carol, _, carol_in = await open_socket(conversation.pk, cookies[2])
    for i in range(6):
        await send(flood, f"flood {i}")
    assert "too fast" in await flood_in.wait_text("too fast")
    for i in range(10):
        await send(flood, f"more {i}")
    assert await flood_in.wait_close() == 4429
    rows = await stored(conversation.pk)
    assert len(rows) == 5
    await send(bob, "bob is fine")
    await carol_in.wait_text("bob is fine")
    await bob.disconnect()
    await carol.disconnect()


@pytest.mark.slow
async def test_an_idle_socket_outlives_three_presence_ttls_online_and_receiving(settings):
    """Nothing times an idle socket out: over three presence TTLs (the heartbeat refreshes
    the entries every TTL/3) both users stay online and the socket still receives. The TTL
    is short so the idling is too (production: 45 s)."""
    settings.CHAT_PRESENCE_TTL = 3
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    await asyncio.sleep(3 * settings.CHAT_PRESENCE_TTL)  # the idleness itself is under test
    assert not alice.future.done() and not bob.future.done()
    online = await presence_store().update(conversation.pk, "probe", [], [])
    assert online == {u.pk for u in users}
    await send(alice, "after the silence")
    await bob_in.wait_text("after the silence")
    await alice.disconnect()
    await bob.disconnect()


async def test_logging_out_ends_that_session_s_sockets_and_no_other_device_s():
    """Logged in on two devices: logging out of one closes its sockets (both tabs of it)
    with 4401, and the other device's socket stays."""
    conversation, users, cookies = await room()
    laptop, phone = cookies[0], await sync_to_async(session_cookie)(users[0])
    alice, _, alice_in = await open_socket(conversation.pk, laptop)
    alice2, _, alice2_in = await open_socket(conversation.pk, laptop)
    alice_phone, _, phone_in = await open_socket(conversation.pk, phone)
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])

    @sync_to_async
    def logout():
        from django.test import Client

        client = Client()
        name, value = laptop.decode().split("=", 1)
        client.cookies[name] = value
        assert client.post("/accounts/logout/").status_code == 302

    await logout()
    assert await alice_in.wait_close() == 4401
    assert await alice2_in.wait_close() == 4401
    await send(bob, "after logout")
    await bob_in.wait_text("after logout")
    await phone_in.wait_text("after logout")  # the other device is still open
    # and the old cookie no longer opens a socket
    again, _, again_in = await open_socket(conversation.pk, laptop)
    assert await again_in.wait_close() == 4401
    await bob.disconnect()
    await alice_phone.disconnect()


@override_settings(CHAT_MAX_SOCKETS_PER_USER_PROCESS=2, CHAT_MAX_SOCKETS_PER_USER=0)
async def test_a_user_s_sockets_in_one_process_are_capped_with_4409():
    conversation, _, cookies = await room()
    at_bound = [await open_socket(conversation.pk, cookies[0]) for _ in range(2)]
    assert all(connected for _, connected, _ in at_bound)
    past, _, past_in = await open_socket(conversation.pk, cookies[0])
    assert await past_in.wait_close() == 4409
    lists = communicator("/ws/inbox", cookies[0])  # a list socket counts too
    assert (await lists.connect(timeout=5))[0]
    assert await Inbox(lists).wait_close() == 4409
    await at_bound[0][0].disconnect()  # one closes: room for another
    again, _, again_in = await open_socket(conversation.pk, cookies[0])
    await send(again, "in again")
    assert await again_in.wait_seqs([1]) == [1]
    await again.disconnect()
    await at_bound[1][0].disconnect()


@override_settings(CHAT_MAX_SOCKETS_PER_USER_PROCESS=0, CHAT_MAX_SOCKETS_PER_USER=3)
async def test_a_user_s_sockets_across_the_cluster_are_capped_with_4409(settings):
    """Two sockets of the user on another (live) process, counted in Redis: one more here is
    at the bound, the next is past it; once that process stops beating, its count lapses."""
    from chat.presence import RedisPresence

    conversation, users, cookies = await room()
    elsewhere = RedisPresence(settings.REDIS_SHARDS)
    elsewhere.process = "another-process"
    for _ in range(2):
        assert await elsewhere.socket_opened(users[0].pk, 3)
    here, connected, _ = await open_socket(conversation.pk, cookies[0])
    assert connected
    past, _, past_in = await open_socket(conversation.pk, cookies[0])
    assert await past_in.wait_close() == 4409
    # The other process is gone: its liveness lapses (CHAT_PRESENCE_TTL) and so do its sockets.
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.REDIS_URLS[0])
    await client.zadd(f"{settings.REDIS_KEY_PREFIX}:processes", {"another-process": 1.0})
    await client.aclose()
    again, _, again_in = await open_socket(conversation.pk, cookies[0])
    await send(again, "counted again")
    assert await again_in.wait_seqs([1]) == [1]
    await again.disconnect()
    await here.disconnect()


async def test_server_side_closes_never_use_code_1000(settings):
    settings.CHAT_SOCKET_MAX_AGE = 1
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    assert await alice_in.wait_close(timeout=5) == 1012


async def test_oversized_frame_is_refused_with_an_error(settings):
    settings.CHAT_MAX_FRAME_BYTES = 1000
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await alice.send_to(text_data=json.dumps({"chat_message": "y" * 2000}))
    assert "Frame too large" in await alice_in.wait_text('id="chat-error"')
    assert await stored(conversation.pk) == []
    await send(alice, "small")
    await alice_in.wait_seqs([1])
    await alice.disconnect()


async def test_hostile_frames_get_errors_and_the_socket_survives():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await alice.send_to(text_data="[" * 30_000 + "]" * 30_000)  # nesting bomb under the cap
    assert "Malformed message" in await alice_in.wait_text('id="chat-error"')
    alice_in.frames.clear()
    await alice.send_to(text_data='{"type": "read", "seq": Infinity}')
    assert "seq must be an integer" in await alice_in.wait_text('id="chat-error"')
    alice_in.frames.clear()
    for payload in ({"chat_message": ["a list"]}, {"chat_message": {"x": 1}}, {"type": ["x"]}):
        await alice.send_to(text_data=json.dumps(payload))
        await alice_in.wait_text('id="chat-error"')
        alice_in.frames.clear()
    await send(alice, "survived")
    assert await alice_in.wait_seqs([1]) == [1]
    await alice.disconnect()


async def test_an_absurd_after_is_clamped_and_live_messages_still_arrive():
    conversation, _, cookies = await room()
    alice, _, _ = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1], after=10**30)
    await send(alice, "hello")
    assert await bob_in.wait_seqs([1]) == [1]
    await alice.disconnect()
    await bob.disconnect()


@override_settings(CHAT_RATE_LIMIT=4)
async def test_flooding_with_non_message_frames_is_closed_too():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    for _ in range(30):
        await alice.send_to(text_data=json.dumps({"type": "typing"}))
    assert await alice_in.wait_close() == 4429


@pytest.mark.parametrize("backend", ["pubsub", "core"])
async def test_readyz_stays_ready_in_a_process_with_open_sockets(backend, request):
    """Regression: a round-trip channel with a non-default prefix waited behind the open
    sockets' 5 s blocking pop and timed out, so readiness flapped under load."""
    from django.test import Client

    if backend == "core":
        request.getfixturevalue("core_layer")
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await alice_in.quiet(0.2)  # its receive loop now holds the layer's receive lock
    for _ in range(3):
        response = await sync_to_async(Client().get)("/readyz")
        assert response.status_code == 200, response.content
    await alice.disconnect()


# --- hostile input --------------------------------------------------------------------------


async def test_a_lone_surrogate_is_refused_to_its_sender_and_the_socket_lives_on():
    """Valid JSON (`\\ud800`) that no database can store: it used to kill the consumer
    (UnicodeEncodeError is not a DatabaseError), so the peer never heard of the next message
    and the page's resend crashed it again."""
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    cid = str(uuid.uuid4())
    await send(alice, "bad \ud800 text", client_id=cid)  # json.dumps writes it as \ud800
    error = await alice_in.wait_text('id="chat-error"')
    assert "surrogate" in error and cid in error
    await send(alice, "next one")
    assert await bob_in.wait_seqs([1]) == [1]
    assert await stored(conversation.pk) == [(1, "next one")]
    await alice.disconnect()
    await bob.disconnect()


async def test_a_nul_byte_is_refused_with_a_clear_error_and_nothing_is_stored():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    cid = str(uuid.uuid4())
    await send(alice, "nul \x00 inside", client_id=cid)
    error = await alice_in.wait_text('id="chat-error"')
    assert "NUL" in error and cid in error
    await send(alice, "clean")
    assert await alice_in.wait_seqs([1]) == [1]
    assert await stored(conversation.pk) == [(1, "clean")]
    await alice.disconnect()


@override_settings(CHAT_RATE_LIMIT=4)
async def test_binary_frames_count_against_the_flood_limit():
    """Binary frames used to be answered before they were counted: 500 of them got 500
    error replies and no close."""
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    for _ in range(60):
        await alice.send_to(bytes_data=b"\x00\x01binary")
    assert await alice_in.wait_close() == 4429
    # 4 x FRAME_RATE_FACTOR frames are answered, then the socket is closed
    assert sum('id="chat-error"' in f for f in alice_in.frames) == 20


@override_settings(CHAT_RATE_LIMIT=4)
async def test_a_closed_socket_does_no_more_work_per_frame(caplog):
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    for _ in range(21):
        await alice.send_to(text_data="{not json")
    assert await alice_in.wait_close() == 4429
    answered = len(alice_in.frames)
    caplog.clear()
    for _ in range(200):
        await alice.send_to(text_data="{not json")
        await alice.send_to(bytes_data=b"\x00")
    await alice_in.quiet(0.5)
    assert len(alice_in.frames) == answered
    assert [r.getMessage() for r in caplog.records if r.name.startswith("chat")] == []


# --- the conversation list's socket (InboxConsumer) ---------------------------------------


async def test_unread_counts_follow_messages_and_read_markers():
    from chat import selectors

    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    for i in range(3):
        await send(alice, f"m{i}")
    await alice_in.wait_seqs([1, 2, 3])

    @sync_to_async
    def unread(user):
        return {r.conversation.pk: r.unread for r in selectors.conversation_list(user)}

    assert (await unread(users[1]))[conversation.pk] == 3
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1], after=0)
    await bob_in.wait_seqs([1, 2, 3])
    await bob.send_to(text_data=json.dumps({"type": "read", "seq": 2}))
    for _ in range(50):
        if (await unread(users[1]))[conversation.pk] == 1:
            break
        await asyncio.sleep(0.05)
    assert (await unread(users[1]))[conversation.pk] == 1
    # a read marker beyond what the socket was sent is clamped
    await bob.send_to(text_data=json.dumps({"type": "read", "seq": 999}))
    await bob_in.quiet(0.3)
    assert (await unread(users[1]))[conversation.pk] == 0
    assert await sync_to_async(Message.objects.count)() == 3
    await alice.disconnect()
    await bob.disconnect()


async def test_inbox_updates_live_with_unread_counts():

    conversation, users, cookies = await room()
    inbox_comm = communicator("/ws/inbox", cookies[1])
    assert (await inbox_comm.connect(timeout=5))[0]
    inbox = Inbox(inbox_comm)
    alice, _, _ = await open_socket(conversation.pk, cookies[0])
    await send(alice, "ping")
    row = await inbox.wait_text(f'id="conv-{conversation.pk}"')
    # The same row for every member's list: the page keeps its title and works out its
    # unread count from the row's newest sequence and its own read marker.
    assert 'data-last-seq="1"' in row and "data-live" in row and "ping" in row
    assert 'hx-swap-oob="afterbegin:#conversation-list"' in row
    await send(alice, "pong")
    await inbox.wait_text('data-last-seq="2"')
    await alice.disconnect()
    await inbox_comm.disconnect()


async def test_a_message_renders_one_row_and_reads_nothing_for_every_list_socket(monkeypatch):
    """Ten open conversation lists: a message is rendered into one row for all of them,
    with no database read per socket (each used to re-read its own row)."""
    from chat import fragments, selectors

    conversation, users, cookies = await room(2)
    lists = []
    for _ in range(5):  # per user, under the per-process socket cap
        for cookie in cookies:
            comm = communicator("/ws/inbox", cookie)
            assert (await comm.connect(timeout=5))[0]
            lists.append(Inbox(comm))
    reads, renders = [], []
    row = selectors.conversation_row
    live = fragments.conversation_row_live_html
    monkeypatch.setattr(selectors, "conversation_row", lambda *a: reads.append(a) or row(*a))
    monkeypatch.setattr(
        fragments, "conversation_row_live_html", lambda **kw: renders.append(kw) or live(**kw)
    )
    alice, _, _ = await open_socket(conversation.pk, cookies[0])
    await send(alice, "to every list")
    for inbox in lists:
        await inbox.wait_text("to every list")
    assert (len(renders), len(reads)) == (1, 0)
    await alice.disconnect()
    for inbox in lists:
        await inbox.comm.disconnect()


async def test_a_removed_participant_s_list_drops_the_conversation_at_once():
    conversation, users, cookies = await room(3)
    comm = communicator("/ws/inbox", cookies[2])
    assert (await comm.connect(timeout=5))[0]
    inbox = Inbox(comm)
    await sync_to_async(services.participants_remove)(
        conversation_id=conversation.pk, user_ids=[users[2].pk]
    )
    frame = await inbox.wait_text(f'id="conv-{conversation.pk}"')
    assert 'hx-swap-oob="delete"' in frame
    alice, _, _ = await open_socket(conversation.pk, cookies[0])
    await send(alice, "not for carol's list")
    await inbox.quiet(0.5)
    assert not any("not for carol" in f for f in inbox.frames)
    await alice.disconnect()
    await comm.disconnect()


async def test_inbox_catches_up_on_what_changed_between_render_and_connect():
    import time as _time

    conversation, users, cookies = await room()
    rendered_at = int(_time.time() * 1000)
    # stored after the page was rendered, before its socket joined anything
    await sync_to_async(services.message_create)(
        conversation_id=conversation.pk, sender=users[0], body="in between"
    )
    inbox_comm = communicator(f"/ws/inbox?since={rendered_at}", cookies[1])
    assert (await inbox_comm.connect(timeout=5))[0]
    inbox = Inbox(inbox_comm)
    row = await inbox.wait_text(f'id="conv-{conversation.pk}"')
    assert "in between" in row and 'data-unread="1"' in row
    await inbox_comm.disconnect()
    # and a bad or absent `since` just means no catch-up
    for path in ("/ws/inbox?since=abc", "/ws/inbox?since=99999999999999999999"):
        comm = communicator(path, cookies[1])
        assert (await comm.connect(timeout=5))[0]
        await comm.disconnect()


@override_settings(CHAT_INBOX_FOLLOW_LIMIT=2)
async def test_a_list_follows_only_its_most_recent_conversations():
    """A user added to conversation after conversation (spam) does not grow what a list
    socket follows: the least recently active drops out."""
    me, *others = [await sync_to_async(make_user)() for _ in range(4)]
    make = sync_to_async(
        lambda *users: services.conversation_start(
            creator=users[0], usernames=[u.username for u in users[1:]], title="spam"
        )
    )
    oldest = await make(others[0], me)
    await make(others[1], me)
    await make(others[2], me)
    cookie = await sync_to_async(session_cookie)(me)
    comm = communicator("/ws/inbox", cookie)
    assert (await comm.connect(timeout=5))[0]
    inbox = Inbox(comm)
    sender = await sync_to_async(session_cookie)(others[0])
    chat, _, _ = await open_socket(oldest.pk, sender)
    await send(chat, "into the oldest")
    await inbox.quiet(0.5)
    assert not any("into the oldest" in f for f in inbox.frames)
    newest = await make(others[0], me)  # a new one: followed at once, the oldest drops
    await inbox.wait_text(f'id="conv-{newest.pk}"')
    await chat.disconnect()
    await comm.disconnect()


async def test_a_participant_removed_in_the_admin_is_closed_with_4403():
    conversation, users, cookies = await room(3)
    carol, _, carol_in = await open_socket(conversation.pk, cookies[2])
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])

    @sync_to_async
    def remove_in_the_admin():
        from django.contrib.auth import get_user_model

        from chat.models import Participant
        from tests.factories import logged_in_client

        admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-admin-1")
        participant = Participant.objects.get(conversation=conversation, user=users[2])
        response = logged_in_client(admin).post(
            f"/admin/chat/participant/{participant.pk}/delete/", {"post": "yes"}
        )
        assert response.status_code == 302

    await remove_in_the_admin()
    assert await carol_in.wait_close() == 4403
    await send(alice, "carol is gone")
    assert await alice_in.wait_seqs([1]) == [1]
    await alice.disconnect()
