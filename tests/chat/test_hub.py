"""The per-process conversation hub (chat.hub): a gap costs one database read however many
sockets share it, and presence is broadcast only when it changes, coalesced. Real Postgres
and the real Redis layer; every socket here is in one process (the test's event loop)."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from chat import services
from chat.models import Conversation
from chat.presence import presence_store
from tests.chat.test_delivery import broadcast
from tests.chat.test_presence import wait_until
from tests.helpers.ws import open_socket, room, send
from tests.parley.test_metrics import value

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_gap_in_a_room_of_fifty_sockets_costs_one_database_read():
    conversation, users, cookies = await room(50)
    sockets = await asyncio.gather(*(open_socket(conversation.pk, c) for c in cookies))
    create = sync_to_async(services.message_create)
    first, _ = await create(conversation_id=conversation.pk, sender=users[0], body="lost")
    second, _ = await create(conversation_id=conversation.pk, sender=users[0], body="second")
    reads = value("parley_heal_reads_total", how="live")
    await broadcast(second)  # the first one's broadcast is "dropped": a gap for all fifty
    for _, _, inbox in sockets:
        assert await inbox.wait_seqs([1, 2], timeout=10) == [1, 2]
    assert "lost" in "".join(sockets[-1][2].frames)
    assert value("parley_heal_reads_total", how="live") == reads + 1
    await asyncio.gather(*(comm.disconnect() for comm, _, _ in sockets))


async def test_a_late_broadcast_is_handed_to_every_socket_in_order_without_a_read():
    conversation, users, cookies = await room(10)
    sockets = await asyncio.gather(*(open_socket(conversation.pk, c) for c in cookies))
    create = sync_to_async(services.message_create)
    first, _ = await create(conversation_id=conversation.pk, sender=users[0], body="first")
    second, _ = await create(conversation_id=conversation.pk, sender=users[0], body="second")
    reads = value("parley_heal_reads_total", how="live")
    for message in (second, first):  # overtaken within the grace period
        await broadcast(message)
    for _, _, inbox in sockets:
        assert await inbox.wait_seqs([1, 2]) == [1, 2]
    assert value("parley_heal_reads_total", how="live") == reads
    await asyncio.gather(*(comm.disconnect() for comm, _, _ in sockets))


async def test_a_socket_that_reconnects_a_little_behind_is_served_from_the_hub():
    """Its catch-up comes from the hub's recent frames: no backlog query per reconnect."""
    conversation, _, cookies = await room(2)
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    for i in range(5):
        await send(alice, f"m{i}")
    await alice_in.wait_seqs([1, 2, 3, 4, 5])
    reads = value("parley_backlog_reads_total")
    replayed = value("parley_messages_replayed_total")
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1], after=2)
    assert await bob_in.wait_seqs([3, 4, 5]) == [3, 4, 5]
    assert value("parley_messages_replayed_total") == replayed + 3
    assert value("parley_backlog_reads_total") == reads  # none from the database
    await send(alice, "live")
    assert await bob_in.wait_seqs([3, 4, 5, 6]) == [3, 4, 5, 6]
    await bob.disconnect()
    await alice.disconnect()


def online(user_id: int, state: bool = True) -> str:
    return f'data-user-id="{user_id}" data-online="{"true" if state else "false"}"'


async def test_presence_is_broadcast_only_when_it_changes():
    conversation, users, cookies = await room(2)
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob_id = users[1].pk
    bob1, _, _ = await open_socket(conversation.pk, cookies[1])
    await alice_in.wait_text(online(bob_id))
    broadcasts = value("parley_presence_broadcasts_total")
    # More tabs of a user who is already online change nothing: nothing is broadcast.
    tabs = [await open_socket(conversation.pk, cookies[1]) for _ in range(5)]
    for comm, _, _ in tabs:
        await comm.disconnect()
    await alice_in.quiet(0.6)  # two coalescing intervals
    assert value("parley_presence_broadcasts_total") == broadcasts
    assert sum(f.count(online(bob_id)) for f in alice_in.frames) == 1
    assert not any(online(bob_id, False) in f for f in alice_in.frames)
    await bob1.disconnect()
    await alice_in.wait_text(online(bob_id, False))
    assert value("parley_presence_broadcasts_total") == broadcasts + 1
    await alice.disconnect()


async def test_arrivals_are_coalesced_into_few_broadcasts(settings):
    """Thirty users arriving together: one write and at most one broadcast per interval,
    not one per socket (a reconnect storm into a big room is O(N), not O(N^2))."""
    conversation, users, cookies = await room(31)
    watcher, _, watcher_in = await open_socket(conversation.pk, cookies[0])
    await watcher_in.quiet(2 * settings.CHAT_PRESENCE_COALESCE_SECONDS)
    broadcasts = value("parley_presence_broadcasts_total")
    started = time.monotonic()
    sockets = await asyncio.gather(*(open_socket(conversation.pk, c) for c in cookies[1:]))
    took = time.monotonic() - started
    for user in users[1:]:
        await watcher_in.wait_text(online(user.pk))
    intervals = took / settings.CHAT_PRESENCE_COALESCE_SECONDS
    sent = value("parley_presence_broadcasts_total") - broadcasts
    assert 1 <= sent <= intervals + 2 < 30, (sent, took)
    # Every latecomer saw everyone who was online when it connected, or heard them arrive.
    for user in users:
        await sockets[-1][2].wait_text(online(user.pk))
    await asyncio.gather(*(comm.disconnect() for comm, _, _ in sockets))
    await watcher.disconnect()


async def test_a_room_bigger_than_the_presence_limit_sends_no_presence(settings):
    """Past CHAT_PRESENCE_MAX_MEMBERS, every connect would be sent every online member."""
    settings.CHAT_PRESENCE_MAX_MEMBERS = 2
    conversation, users, cookies = await room(3)
    broadcasts = value("parley_presence_broadcasts_total")
    sockets = [await open_socket(conversation.pk, c) for c in cookies]
    await send(sockets[0][0], "hello")
    for _, _, inbox in sockets:
        assert await inbox.wait_seqs([1]) == [1]
        await inbox.quiet(0.6)
        assert not any("data-online" in f for f in inbox.frames)
    assert value("parley_presence_broadcasts_total") == broadcasts
    for comm, _, _ in sockets:
        await comm.disconnect()


async def test_sends_make_no_presence_store_call_and_the_heartbeat_notes_the_newest(monkeypatch):
    """The newest-sequence note (another process heals a tail gap from it when the database
    cannot answer) is written by the process heartbeat, in its pipeline: with the presence
    store's per-call note hanging, twenty sends from four sockets are stored and delivered in
    order (each send used to await a note, holding up the next broadcast, one Redis call per
    send), and within a beat Redis holds the newest sequence."""
    conversation, users, cookies = await room(4)
    sockets = await asyncio.gather(*(open_socket(conversation.pk, c) for c in cookies))
    store = presence_store()

    async def hangs(conversation_id: int, seq: int, epoch: str = "") -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(store, "note_seq", hangs)
    for i in range(20):
        await send(sockets[i % 4][0], f"m{i}")
    for _, _, inbox in sockets:
        assert await inbox.wait_seqs(list(range(1, 21)), timeout=10) == list(range(1, 21))
    epoch = (await sync_to_async(Conversation.objects.get)(pk=conversation.pk)).epoch

    async def noted_newest() -> bool:
        answer = await store.heartbeat_many({conversation.pk: []}, {conversation.pk: epoch})
        return answer[conversation.pk][1] == 20

    await wait_until(noted_newest)  # CHAT_PRESENCE_TTL=6 in tests: a beat every ~2 s
    await asyncio.gather(*(comm.disconnect() for comm, _, _ in sockets))
