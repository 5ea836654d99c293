"""chat.presence: who is online in a conversation, per process entry with a TTL, in Redis
(the real one, this run's key prefix) and in the embedded store."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat.presence import LocalPresence, RedisPresence
from tests.helpers.ws import open_socket, room


@pytest.fixture(params=["redis", "local"])
def store(request, settings):
    settings.CHAT_PRESENCE_TTL = 1
    if request.param == "local":
        return LocalPresence()
    return RedisPresence(settings.REDIS_SHARDS)


async def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_joins_and_leaves_per_process_entry(store):
    cid = int(time.time() * 1000) % 10_000_000
    assert await store.update(cid, "hub-a", [1, 2], []) == {1, 2}
    assert await store.update(cid, "hub-b", [2], []) == {1, 2}
    # User 2 leaves one process but is still online through the other.
    assert await store.update(cid, "hub-a", [], [2]) == {1, 2}
    assert await store.update(cid, "hub-b", [], [2]) == {1}


async def test_an_entry_not_refreshed_lapses_and_a_heartbeat_keeps_it(store):
    cid = int(time.time() * 1000) % 10_000_000 + 1
    await store.update(cid, "hub-a", [1, 2], [])

    async def only_kept_one_online() -> bool:
        answer = await store.heartbeat_many({cid: [(1, "hub-a")]})
        return answer[cid][0] == {1}

    await wait_until(only_kept_one_online)  # user 2's entry lapsed after the 1 s TTL


async def test_the_newest_sequence_note_only_grows(store):
    cid = int(time.time() * 1000) % 10_000_000 + 2
    await store.note_seq(cid, 5, "ep")
    await store.note_seq(cid, 3, "ep")
    answer = await store.heartbeat_many({cid: [(1, "hub-a")]}, {cid: "ep"})
    assert answer[cid][1] == 5


async def test_a_heartbeat_notes_each_conversations_newest_sequence_in_its_epoch(store):
    """What every send used to write itself: a beat notes it, it only grows, and a note
    made in one epoch is never read in another."""
    cid = int(time.time() * 1000) % 10_000_000 + 3
    await store.heartbeat_many({cid: [(1, "hub-a")]}, {cid: "ep"}, {cid: 7})
    answer = await store.heartbeat_many({cid: [(1, "hub-a")]}, {cid: "ep"}, {cid: 4})
    assert answer[cid][1] == 7
    other = await store.heartbeat_many({cid: []}, {cid: "restored"})
    assert other[cid] == ({1}, 0)


# --- through the consumers: what members see -----------------------------------------------

pytestmark_consumers = pytest.mark.django_db(transaction=True)


@pytestmark_consumers
async def test_crashed_consumer_presence_expires(settings):
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    bob_id = users[1].pk
    await alice_in.wait_text(
        f'id="presence-{bob_id}" hx-swap-oob="true" class="presence" '
        f'data-user-id="{bob_id}" data-online="true"'
    )
    # a crash: the process dies, disconnect() never runs, nothing says goodbye
    bob.future.cancel()
    await alice_in.wait_text(
        f'data-user-id="{bob_id}" data-online="false"', timeout=settings.CHAT_PRESENCE_TTL * 3
    )
    await alice.disconnect()


@pytestmark_consumers
async def test_two_tabs_of_one_user_count_once_and_closing_one_keeps_them_online():
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob_id = users[1].pk
    online = f'data-user-id="{bob_id}" data-online="true"'
    bob1, _, bob1_in = await open_socket(conversation.pk, cookies[1])
    await bob1_in.wait_text(online)  # its presence snapshot: the tab has joined
    bob2, _, bob2_in = await open_socket(conversation.pk, cookies[1])
    await bob2_in.wait_text(online)
    await alice_in.wait_text(online)
    await bob1.disconnect()
    await alice_in.quiet(0.5)
    assert not any(f'data-user-id="{bob_id}" data-online="false"' in f for f in alice_in.frames)
    assert sum(f.count(online) for f in alice_in.frames) == 1
    await bob2.disconnect()
    await alice_in.wait_text(f'data-user-id="{bob_id}" data-online="false"')
    await alice.disconnect()
