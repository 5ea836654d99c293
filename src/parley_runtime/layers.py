"""channels-redis' pub/sub layer with a small, bounded queue per channel (parley_runtime.slimqueue).

channels-redis 4.x makes an asyncio.Queue (~2.6 KiB empty, unbounded) for every channel,
i.e. for every open socket. Here each is a ChannelQueue: two slots, bounded by
`ChannelQueue.maxsize`, and a full queue drops the newest broadcast and calls `on_overflow`
(the project counts it; sequence numbers make the gap visible and it is healed from the
database). Stock: `channels_redis.pubsub.RedisPubSubChannelLayer`, unchanged (`backend()`).

The layer API (new_channel, send, receive, group_add, group_discard, group_send, flush) is
channels-redis' own, every method a coroutine function; channels-redis' own pub/sub tests run
against this class (tests/parley_runtime/upstream).

Relies on (tests/parley_runtime/test_canary_channels_redis.py): RedisPubSubLoopLayer's
`channels` dict and `_get_shard`, RedisPubSubChannelLayer's `_layers`, `_args`, `_kwargs`,
`_get_layer`, the proxy its receive mirrors (_async_proxy) and
channels_redis.pubsub._wrap_close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, _wrap_close

from parley_runtime.slimqueue import SlimQueue

TUNED = "parley_runtime.layers.PubSubChannelLayer"
STOCK = "channels_redis.pubsub.RedisPubSubChannelLayer"


def backend(mode: str) -> str:
    """The CHANNEL_LAYERS BACKEND of the pub/sub layer for a runtime mode."""
    return TUNED if mode == "tuned" else STOCK


class ChannelQueue(SlimQueue):
    """A socket's broadcasts, bounded: a stalled consumer drops the newest instead of
    growing without end."""

    __slots__ = ()
    maxsize = 1000  # the project sets it (CHAT_SOCKET_QUEUE_LIMIT)
    on_overflow: Callable[[], None] = staticmethod(lambda: None)

    def overflowed(self, item: object) -> None:
        ChannelQueue.on_overflow()


class SlimPubSubLoopLayer(RedisPubSubLoopLayer):
    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = ChannelQueue()
        await self._get_shard(channel).subscribe(channel)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """RedisPubSubChannelLayer whose per-loop layer is SlimPubSubLoopLayer."""

    async def receive(self, channel: str) -> dict:
        """channels-redis' receive: a coroutine function, as its __getattr__ proxy
        (_async_proxy) is, that finds the per-loop layer when it runs, in the loop it runs
        in (so `asyncio.run(layer.receive(channel))` works)."""
        return await self._get_layer().receive(channel)

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = self._layers[loop] = SlimPubSubLoopLayer(
                *self._args, **self._kwargs, channel_layer=self
            )
            _wrap_close(self, loop)
            return layer
