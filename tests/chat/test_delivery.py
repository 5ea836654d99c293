"""Nothing lost: replay, ordering under races, idempotency, gap healing, Redis outages."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from chat import services
from chat.models import Message
from chat.presence import presence_store
from tests.helpers.ws import open_socket, room, send, stored
from tests.redis_server import ThrowawayRedis

pytestmark = pytest.mark.django_db(transaction=True)


async def broadcast(message: Message, published_at: float | None = None) -> None:
    """What a sender's process publishes for a stored message, sent straight to the layer
    (so a test decides the order, or leaves one out; `published_at`: when it says it was
    published, for a test of late arrivals)."""
    from chat import events, fragments

    event = events.message(
        conversation_id=message.conversation_id,
        seq=message.seq,
        frame=fragments.ws_message(fragments.message_html(message)),
        publisher="test",
    )
    if published_at is not None:
        event["t"] = published_at
    assert await events.broadcast(event)


async def test_reconnect_with_last_sequence_replays_exactly_the_missed_messages():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    await send(alice, "before")
    await bob_in.wait_seqs([1])
    last_seen = bob_in.seqs[-1]
    await bob.disconnect()

    for i in range(20):
        await send(alice, f"missed {i}")
    await alice_in.wait_seqs(list(range(1, 22)))

    bob, _, bob_in = await open_socket(conversation.pk, cookies[1], after=last_seen)
    assert await bob_in.wait_seqs(list(range(2, 22))) == list(range(2, 22))
    await send(alice, "live again")
    await bob_in.wait_seqs(list(range(2, 23)))
    await bob_in.quiet(0.3)
    assert bob_in.seqs == list(range(2, 23))
    replayed = "".join(bob_in.frames)
    assert all(f"missed {i}<" in replayed for i in range(20))
    await alice.disconnect()
    await bob.disconnect()


async def test_two_racing_senders_get_gapless_sequences_in_one_order_for_everyone():
    conversation, _, cookies = await room(3)
    a, _, a_in = await open_socket(conversation.pk, cookies[0])
    b, _, b_in = await open_socket(conversation.pk, cookies[1])
    c, _, c_in = await open_socket(conversation.pk, cookies[2])
    n = 25

    async def burst(comm, tag):
        for i in range(n):
            await send(comm, f"{tag}{i}")

    await asyncio.gather(burst(a, "a"), burst(b, "b"))
    expected = list(range(1, 2 * n + 1))
    for inbox in (a_in, b_in, c_in):
        assert await inbox.wait_seqs(expected, timeout=15) == expected
    rows = await stored(conversation.pk)
    assert [s for s, _ in rows] == expected
    # every participant saw the same message at the same sequence
    bodies = {s: b for s, b in rows}
    for inbox in (a_in, b_in, c_in):
        text = "".join(inbox.frames)
        positions = [text.index(f">{bodies[s]}<") for s in expected]
        assert positions == sorted(positions)
    # each sender's own messages keep their sending order
    for tag in ("a", "b"):
        mine = [int(b[1:]) for _, b in rows if b.startswith(tag)]
        assert mine == list(range(n))
    for comm in (a, b, c):
        await comm.disconnect()


async def test_same_client_id_twice_is_stored_once_and_broadcast_once():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    cid = str(uuid.uuid4())
    await send(alice, "only once", client_id=cid)
    await send(alice, "only once", client_id=cid)
    await send(alice, "next")
    await bob_in.wait_seqs([1, 2])
    await alice_in.wait_seqs([1, 2])
    await bob_in.quiet(0.3)
    await alice_in.quiet(0.1)
    assert bob_in.seqs == [1, 2] and alice_in.seqs == [1, 2]
    assert sum(f.count(f'data-client-id="{cid}"') for f in alice_in.frames) == 1
    assert await stored(conversation.pk) == [(1, "only once"), (2, "next")]
    await alice.disconnect()
    await bob.disconnect()


async def test_retry_after_reconnect_is_confirmed_once():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    cid = str(uuid.uuid4())
    await send(alice, "maybe lost", client_id=cid)
    await alice_in.wait_seqs([1])
    await alice.disconnect()
    # the client never saw the confirmation (say), reconnects from 0 and retries
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0], after=0)
    await send(alice, "maybe lost", client_id=cid)
    await alice_in.wait_seqs([1])
    await alice_in.quiet(0.3)
    assert alice_in.seqs == [1]
    assert await stored(conversation.pk) == [(1, "maybe lost")]
    await alice.disconnect()


async def test_a_dropped_broadcast_is_noticed_as_a_gap_and_healed_from_the_database():
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    # stored but never broadcast: exactly what a layer drop looks like to bob
    await sync_to_async(services.message_create)(
        conversation_id=conversation.pk, sender=users[0], body="dropped by the layer"
    )
    await send(alice, "the next one")
    assert await bob_in.wait_seqs([1, 2]) == [1, 2]
    assert "dropped by the layer" in "".join(bob_in.frames)
    await alice.disconnect()
    await bob.disconnect()


async def test_broadcasts_arriving_out_of_order_are_delivered_in_order_without_a_heal():
    """Two senders' store-then-publish steps race: seq 2's broadcast can overtake seq 1's.
    The consumer holds 2 until 1 arrives live instead of reading the database at once."""
    from tests.parley.test_metrics import value

    conversation, users, cookies = await room()
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    create = sync_to_async(services.message_create)
    first, _ = await create(conversation_id=conversation.pk, sender=users[0], body="first")
    second, _ = await create(conversation_id=conversation.pk, sender=users[0], body="second")
    gaps = value("parley_sequence_gaps_total", how="live")
    for message in (second, first):
        await broadcast(message)
    assert await bob_in.wait_seqs([1, 2]) == [1, 2]
    await bob_in.quiet(0.3)
    assert bob_in.seqs == [1, 2]
    assert value("parley_sequence_gaps_total", how="live") == gaps
    await bob.disconnect()


async def test_too_many_held_frames_read_the_database_without_waiting_out_the_grace(
    monkeypatch,
):
    """A missing broadcast with a flood behind it: past HELD_LIMIT held frames the consumer
    stops waiting and heals, so memory per socket stays bounded."""
    from chat import delivery, stream

    monkeypatch.setattr(delivery, "GAP_GRACE_SECONDS", 120.0)  # far beyond the wait below
    conversation, users, cookies = await room()
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])

    @sync_to_async
    def store(n):
        return [
            services.message_create(conversation_id=conversation.pk, sender=users[0], body=f"m{i}")[
                0
            ]
            for i in range(n)
        ]

    messages = await store(stream.HELD_LIMIT + 2)
    for message in messages[1:]:  # the first one's broadcast is "dropped"
        await broadcast(message)
    expected = [m.seq for m in messages]
    assert await bob_in.wait_seqs(expected, timeout=15) == expected
    await bob.disconnect()


async def test_a_dropped_last_broadcast_is_healed_without_a_later_message():
    conversation, users, cookies = await room()
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    message, _ = await sync_to_async(services.message_create)(
        conversation_id=conversation.pk, sender=users[0], body="tail"
    )
    await presence_store().note_seq(conversation.pk, message.seq)
    # the heartbeat (CHAT_PRESENCE_TTL=6 in tests: every ~2 s) notices the newer sequence
    assert await bob_in.wait_seqs([1], timeout=8) == [1]
    await bob.disconnect()


async def test_a_message_the_database_refuses_gets_an_error_never_a_confirmation():
    conversation, _, cookies = await room()

    @sync_to_async
    def poison():
        with connection.cursor() as cur:
            cur.execute(
                "CREATE OR REPLACE FUNCTION parley_test_reject() RETURNS trigger AS $$ BEGIN "
                "IF NEW.body = 'poison' THEN RAISE EXCEPTION 'disk full (simulated)'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cur.execute(
                "CREATE TRIGGER parley_test_reject BEFORE INSERT ON chat_message "
                "FOR EACH ROW EXECUTE FUNCTION parley_test_reject()"
            )

    await poison()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    cid = str(uuid.uuid4())
    await send(alice, "poison", client_id=cid)
    err = await alice_in.wait_text('id="chat-error"')
    # Stored or not is unknown to the server (the reply may be what was lost): the page keeps
    # the text and its client_id and sends it again, and a retry cannot store it twice.
    assert "could not be saved" in err and cid in err and "data-retry-after=" in err
    assert alice_in.seqs == []
    # the failed transaction gave its sequence number back: no gap
    await send(alice, "fine")
    assert await bob_in.wait_seqs([1]) == [1]
    assert await stored(conversation.pk) == [(1, "fine")]
    await alice.disconnect()
    await bob.disconnect()


@pytest.fixture(params=["core", "pubsub"])
def throwaway_redis(settings, request):
    """A Redis of our own on another port, as the channel layer and presence store, with
    each channel-layer backend."""
    from channels.layers import channel_layers

    from chat.presence import reset_presence_store
    from parley.redis_shards import parse_shards

    server = ThrowawayRedis()
    server.backend = request.param
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    settings.REDIS_URLS = [url]
    settings.REDIS_SHARDS = parse_shards([url])
    config = {"hosts": [{"address": url}], "prefix": settings.CHANNEL_LAYER_PREFIX}
    if request.param == "core":
        backend = "channels_redis.core.RedisChannelLayer"
        config.update(capacity=1000, group_expiry=settings.CHAT_SOCKET_MAX_AGE + 300)
    else:
        backend = "parley_runtime.layers.PubSubChannelLayer"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": backend, "CONFIG": config}}
    channel_layers.backends.clear()
    reset_presence_store()
    yield server
    server.stop()
    channel_layers.backends.clear()
    reset_presence_store()


async def test_redis_outage_loses_nothing_and_sockets_stay_open(throwaway_redis):
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    await send(alice, "before the outage")
    await bob_in.wait_seqs([1])

    # Off the event loop: a Redis restart does not block the app's loop (which would be an
    # overload of its own: sends are refused while the loop runs late).
    await asyncio.to_thread(throwaway_redis.stop)
    await send(alice, "during the outage")
    # stored and confirmed to the sender although the layer is down; bob's socket is in the
    # same process, whose hub hands it over without the layer
    await alice_in.wait_seqs([1, 2])
    await bob_in.wait_seqs([1, 2])
    # another process stores one meanwhile: its broadcast is lost with Redis
    await sync_to_async(services.message_create)(
        conversation_id=conversation.pk, sender=users[1], body="from elsewhere"
    )
    assert await stored(conversation.pk) == [
        (1, "before the outage"),
        (2, "during the outage"),
        (3, "from elsewhere"),
    ]
    await bob_in.quiet(1.0)
    assert bob_in.seqs == [1, 2]
    assert not alice.future.done() and not bob.future.done()  # no flapping: still open

    # same port, empty: group memberships are gone
    await asyncio.to_thread(throwaway_redis.start)
    assert await bob_in.wait_seqs([1, 2, 3], timeout=15) == [1, 2, 3]
    assert await alice_in.wait_seqs([1, 2, 3], timeout=15) == [1, 2, 3]
    await send(bob, "after recovery")
    assert await alice_in.wait_seqs([1, 2, 3, 4], timeout=10) == [1, 2, 3, 4]
    assert await bob_in.wait_seqs([1, 2, 3, 4]) == [1, 2, 3, 4]
    await alice.disconnect()
    await bob.disconnect()


async def test_typing_is_throttled_and_not_echoed_to_the_typist():
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    for _ in range(10):
        await alice.send_to(text_data=json.dumps({"type": "typing"}))
    await bob_in.wait_text("is typing")
    await bob_in.quiet(0.5)
    await alice_in.quiet(0.1)
    assert sum("is typing" in f for f in bob_in.frames) == 1
    assert not any("is typing" in f for f in alice_in.frames)
    await alice.disconnect()
    await bob.disconnect()


async def test_stale_group_entries_of_crashed_consumers_expire(settings, core_layer):
    """A consumer that dies without disconnect() leaves its group entry; the layer drops it
    after group_expiry, which is bounded by the socket lifetime (live sockets reconnect
    before it)."""
    import redis.asyncio as aioredis
    from channels.layers import get_channel_layer

    layer_conf = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    assert layer_conf["group_expiry"] > settings.CHAT_SOCKET_MAX_AGE
    conversation, _, cookies = await room()
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    await bob_in.quiet(0.2)
    bob.future.cancel()  # crash
    layer = get_channel_layer()
    key = layer._group_key(f"chat.{conversation.pk}")
    client = aioredis.Redis.from_url(settings.REDIS_URLS[0])
    assert key.startswith(settings.CHANNEL_LAYER_PREFIX.encode())
    assert await client.zcard(key) == 1
    # age the entry past group_expiry, as time would
    old = (await client.zrange(key, 0, -1))[0]
    await client.zadd(key, {old: 1.0})
    await layer.group_send(f"chat.{conversation.pk}", {"type": "noop"})
    assert await client.zcard(key) == 0
    await client.aclose()


async def test_a_socket_opened_while_redis_is_down_goes_live_when_it_returns(throwaway_redis):
    """A socket holds no layer channel of its own (its process's hub does, and retries its
    join): with either layer it opens on Postgres alone."""
    conversation, users, cookies = await room()
    await asyncio.to_thread(throwaway_redis.stop)
    bob, connected, bob_in = await open_socket(conversation.pk, cookies[1])
    assert connected  # Postgres is enough to open and replay
    await asyncio.to_thread(throwaway_redis.start)
    # Stored and broadcast by another process: it reaches bob through the layer once his
    # process's hub has joined again (or its recovery reads it).
    message, _ = await sync_to_async(services.message_create)(
        conversation_id=conversation.pk, sender=users[0], body="are you there?"
    )
    await broadcast(message)
    assert await bob_in.wait_seqs([1], timeout=15) == [1]
    await bob.disconnect()


async def test_a_resend_of_a_message_the_socket_is_past_is_confirmed_to_it_alone():
    """A page that reloaded before its confirmation sends the text again with its client_id:
    stored once, and this page is told so, although its socket is past that sequence (the
    stream drops it as a duplicate): a confirmation, not the message a second time."""
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    cid = str(uuid.uuid4())
    await send(alice, "first", client_id=cid)
    await send(alice, "second")
    await alice_in.wait_seqs([1, 2])
    await bob_in.wait_seqs([1, 2])
    await send(alice, "first", client_id=cid)  # the resend
    confirmed = await alice_in.wait_text(f'data-confirms="{cid}"')
    assert "data-seq" not in confirmed  # not the message again: the page has it
    await bob_in.quiet(0.3)
    assert bob_in.seqs == [1, 2] and alice_in.seqs == [1, 2]
    assert await stored(conversation.pk) == [(1, "first"), (2, "second")]
    await alice.disconnect()
    await bob.disconnect()
