"""REDIS_URL's shards (parley.redis_shards): plain servers and Sentinel-managed masters, and
what the app's Redis clients do when a shard's primary dies and its replica is promoted,
against real redis-server processes and real Sentinels."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from parley.redis_shards import RedisShard, RedisShardError, parse_shards
from tests.parley.test_settings import run_python
from tests.redis_server import FailoverShards, failover_shards


def test_plain_urls_are_shards_as_they_are() -> None:
    shards = parse_shards(["redis://:pw@10.0.0.1:6379/2", "rediss://r2:6380/0"])
    assert [s.layer_host() for s in shards] == [
        {"address": "redis://:pw@10.0.0.1:6379/2"},
        {"address": "rediss://r2:6380/0"},
    ]
    assert shards[0].label == "redis 10.0.0.1:6379/2"  # no password in logs


def test_a_sentinel_shard_names_its_master_and_every_sentinel() -> None:
    (shard,) = parse_shards(["sentinel://:s3cret@Shard-A/3"], ["10.0.0.5:26379", "s2:26380"])
    assert shard.layer_host() == {
        "master_name": "Shard-A",  # case kept: Sentinel's names are case-sensitive
        "sentinels": [("10.0.0.5", 26379), ("s2", 26380)],
        "db": 3,
        "password": "s3cret",
    }
    assert shard.label == "sentinel Shard-A/3"


@pytest.mark.parametrize(
    ("urls", "sentinels", "message"),
    [
        (["http://r:6379"], [], "not redis://, rediss:// or sentinel://"),
        (["sentinel://shard-a/0"], [], "REDIS_SENTINELS is empty"),
        (["sentinel:///0"], ["s:26379"], "sentinel://master-name/db"),
        (["sentinel://shard-a/x"], ["s:26379"], "sentinel://master-name/db"),
        (["sentinel://shard-a/0"], ["s"], "is not host:port"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_name(urls, sentinels, message) -> None:
    with pytest.raises(RedisShardError, match=message):
        parse_shards(urls, sentinels)


def test_settings_refuse_to_start_on_a_bad_shard() -> None:
    result = run_python(
        "import django; django.setup()", REDIS_URL="sentinel://shard-a/0", REDIS_SENTINELS=None
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "REDIS_SENTINELS is empty" in result.stderr


def test_settings_give_the_channel_layer_the_sentinel_hosts() -> None:
    code = (
        "import json, django; django.setup(); from django.conf import settings as s;"
        "print(json.dumps(s.CHANNEL_LAYERS['default']['CONFIG']['hosts']))"
    )
    result = run_python(
        code, REDIS_URL="sentinel://shard-a/1,redis://r:6379/0", REDIS_SENTINELS="s1:26379"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        {"master_name": "shard-a", "sentinels": [["s1", 26379]], "db": 1},
        {"address": "redis://r:6379/0"},
    ]


@pytest.fixture(scope="module")
def shards() -> Iterator[FailoverShards]:
    with failover_shards() as group:
        yield group


def _shard(group: FailoverShards, name: str) -> RedisShard:
    (shard,) = parse_shards([f"sentinel://{name}/0"], group.sentinels)
    return shard


def _until(condition, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)


def test_clients_follow_a_promoted_replica(shards: FailoverShards) -> None:
    """The sync client (start-up check) and the async client (presence, sequence notes,
    socket caps) write to the primary, and after its SIGKILL to the promoted replica; what
    was written before the kill and replicated is still there."""
    shard = _shard(shards, "shard-a")
    client = shard.sync_client(socket_timeout=1, socket_connect_timeout=1)
    key = f"parley-test:{uuid.uuid4().hex}"
    client.set(key, "before")
    assert client.wait(1, 2000) == 1  # replicated
    old = shards.kill_primary("shard-a")
    killed = time.monotonic()
    promoted_after = shards.wait_promoted("shard-a", old)
    assert _until(lambda: client.set(key + ":after", "1"), timeout=15)
    assert client.get(key) == b"before"
    # Bounded: down-after (1 s) + the Sentinels' vote and the promotion.
    assert promoted_after < 15
    assert time.monotonic() - killed < 20

    async def async_side() -> bytes | None:
        aclient = shard.async_client(socket_timeout=1, socket_connect_timeout=1)
        try:
            await aclient.set(key + ":async", "1")
            return await aclient.get(key)
        finally:
            await aclient.aclose()

    assert asyncio.run(async_side()) == b"before"
    # The other shard never noticed.
    other = _shard(shards, "shard-b").sync_client(socket_timeout=1)
    assert other.ping()


def test_the_channel_layer_delivers_again_after_a_failover(shards: FailoverShards) -> None:
    """channels-redis's pub/sub layer on a Sentinel shard: a group message reaches its
    subscriber before the primary dies and again once the replica is promoted; what was
    published in between is lost to pub/sub (the app's heartbeat heals it from Postgres)."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    shard = _shard(shards, "shard-b")

    async def scenario() -> float:
        layer = RedisPubSubChannelLayer(hosts=[shard.layer_host()], prefix="parley-failover")
        try:
            channel = await layer.new_channel()
            await layer.group_add("room", channel)
            await layer.group_send("room", {"type": "chat.message", "n": 0})
            assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == 0
            old = shards.kill_primary("shard-b")
            killed = time.monotonic()
            await asyncio.to_thread(shards.wait_promoted, "shard-b", old)
            n = 0
            while True:  # what a heartbeat does: publish until it is heard again
                n += 1
                try:
                    await layer.group_send("room", {"type": "chat.message", "n": n})
                    message = await asyncio.wait_for(layer.receive(channel), 0.5)
                    if message["n"] == n:
                        return time.monotonic() - killed
                except (TimeoutError, redis.exceptions.RedisError, OSError):
                    pass
                assert time.monotonic() - killed < 30, "no delivery 30 s after the kill"
        finally:
            await layer.flush()

    assert asyncio.run(scenario()) < 30
