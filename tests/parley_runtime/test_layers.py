"""parley_runtime.layers.PubSubChannelLayer: channels-redis' pub/sub layer with SlimQueue
channels, against the real Redis."""

from __future__ import annotations

import asyncio

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
