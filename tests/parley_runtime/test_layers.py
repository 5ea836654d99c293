"""parley_runtime.layers.PubSubChannelLayer: channels-redis' pub/sub layer with SlimQueue
channels, against the real Redis."""

from __future__ import annotations

import asyncio
import inspect
import uuid

import pytest
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

import parley_runtime
from parley_runtime.layers import PubSubChannelLayer
from parley_runtime.slimqueue import SlimQueue


async def test_the_default_layer_gives_each_channel_a_slim_queue_and_delivers():
    """Tuned: our layer with a SlimQueue per channel; stock: channels-redis' own, untouched.
    Either delivers."""
    layer = get_channel_layer()
    tuned = parley_runtime.mode() == "tuned"
    assert isinstance(layer, PubSubChannelLayer) is tuned
    assert isinstance(layer, RedisPubSubChannelLayer)
    first, second = await layer.new_channel(), await layer.new_channel()
    # channels-redis keeps a queue per channel: ours, or the override no longer applies
    queues = [layer._get_layer().channels[c] for c in (first, second)]
    assert all(isinstance(q, SlimQueue) is tuned for q in queues)
    await layer.group_add("parley-test-group", first)
    await layer.group_add("parley-test-group", second)
    await layer.group_send("parley-test-group", {"type": "t.m", "n": 1})
    await layer.send(second, {"type": "t.m", "n": 2})
    got = [await asyncio.wait_for(layer.receive(c), 5) for c in (first, second, second)]
    assert [m["n"] for m in got] == [1, 1, 2]
    await layer.group_discard("parley-test-group", first)
    await layer.group_discard("parley-test-group", second)


def test_receive_is_a_coroutine_function_as_channels_redis_is(settings):
    """Like channels-redis' (its __getattr__ proxy): a coroutine function, the per-loop
    layer found when the coroutine runs, so it can be made outside a running loop."""
    layer = PubSubChannelLayer(hosts=settings.REDIS_URLS, prefix=settings.CHANNEL_LAYER_PREFIX)
    stock = RedisPubSubChannelLayer(hosts=settings.REDIS_URLS)
    assert inspect.iscoroutinefunction(PubSubChannelLayer.receive)
    assert inspect.iscoroutinefunction(layer.receive) and inspect.iscoroutinefunction(stock.receive)
    channel = f"{settings.CHANNEL_LAYER_PREFIX}.sync-receive.{uuid.uuid4().hex}"
    with pytest.raises(asyncio.TimeoutError):  # nothing sent: it waited, in asyncio.run's loop
        asyncio.run(asyncio.wait_for(layer.receive(channel), 0.2))
    assert layer._layers == {}  # that loop's layer went with the loop, as channels-redis'
