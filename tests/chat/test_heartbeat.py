"""The process-wide presence heartbeat (chat.heartbeat) against the real Redis."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from chat.heartbeat import heartbeat
from chat.presence import RedisPresence
from parley.redis_shards import parse_shards
from tests.helpers.ws import open_socket, room

pytestmark = pytest.mark.django_db(transaction=True)


async def test_idle_sockets_outlive_the_presence_ttl_and_stay_online(settings):
    settings.CHAT_PRESENCE_TTL = 2  # a beat every second
    conversation, users, cookies = await room(3)
    sockets = [await open_socket(conversation.pk, c) for c in cookies]
    for _, _, inbox in sockets:
        for user in users:
            await inbox.wait_text(f'data-user-id="{user.pk}" data-online="true"')
    # Idle for three TTLs: without refreshes every entry would have lapsed twice over.
    await sockets[0][2].quiet(3 * settings.CHAT_PRESENCE_TTL)
    for _, _, inbox in sockets:
        await inbox.quiet(0.1)
        assert not any('data-online="false"' in f for f in inbox.frames)
    client = aioredis.Redis.from_url(settings.REDIS_URLS[0])
    entries = await client.zrange(
        f"{settings.REDIS_KEY_PREFIX}:presence:{conversation.pk}", 0, -1, withscores=True
    )
    await client.aclose()
    assert len(entries) == 3 and all(expiry > time.time() for _, expiry in entries)
    # one hub for the conversation in this process, one entry per user, one beat for all
    assert len(heartbeat().members[conversation.pk].presence_entries()) == 3
    for comm, _, _ in sockets:
        await comm.disconnect()
    assert conversation.pk not in heartbeat().members
    assert heartbeat().task is None  # nothing left to beat for: the task is gone


async def test_heartbeat_many_leaves_out_an_unreachable_shard():
    reachable, dead = settings.REDIS_URLS[0], "redis://127.0.0.1:1/0"
    store = RedisPresence(parse_shards([reachable, dead]))
    answers = await store.heartbeat_many({10: [(1, "chan-a")], 11: [(2, "chan-b")]})
    # conversation 10 lives on shard 0 (reachable), 11 on shard 1 (nothing listens there)
    assert answers == {10: ({1}, 0)}
