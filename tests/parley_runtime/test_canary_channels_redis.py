"""What parley_runtime.layers relies on in channels-redis 4.3.0 (pins.py)."""

from __future__ import annotations

from channels_redis import pubsub

from tests.parley_runtime.canary import fingerprint


def test_the_per_channel_queue_is_made_where_the_slim_layer_makes_its_own():
    assert fingerprint(pubsub.RedisPubSubLoopLayer._subscribe_to_channel) == "df19ebf7b549bc1b"


def test_the_per_loop_layer_is_found_as_the_slim_layer_finds_it():
    assert fingerprint(pubsub.RedisPubSubChannelLayer._get_layer) == "dbdd7316585227fd"
    # Every layer API method reaches the per-loop layer through __getattr__ and the
    # _async_proxy coroutine; the tuned layer's receive is that proxy for receive, written
    # out (a coroutine function that finds the per-loop layer when it runs).
    assert fingerprint(pubsub.RedisPubSubChannelLayer.__getattr__) == "5c65aea5208ca10d"
    assert fingerprint(pubsub._async_proxy) == "866baa27df095930"
    assert callable(pubsub._wrap_close)
