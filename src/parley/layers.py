"""The pub/sub channel layer with a small per-channel queue (see parley.slimqueue)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, _wrap_close
from django.conf import settings

from parley import metrics
from parley.slimqueue import SlimQueue


class ChannelQueue(SlimQueue):
    """A socket's broadcasts, bounded: a stalled consumer drops the newest (sequences make
    the gap visible, and it is healed from the database) instead of growing without end."""

    __slots__ = ()
    maxsize = settings.CHAT_SOCKET_QUEUE_LIMIT

    def overflowed(self, item: object) -> None:
        metrics.LAYER_MESSAGES_DROPPED.inc()


class SlimPubSubLoopLayer(RedisPubSubLoopLayer):
    async def _subscribe_to_channel(self, channel: str) -> None:
        # channels-redis 4.x: an asyncio.Queue per channel, i.e. per open socket.
        self.channels[channel] = ChannelQueue()
        await self._get_shard(channel).subscribe(channel)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels_redis.pubsub.RedisPubSubChannelLayer, its per-loop layer SlimPubSubLoopLayer."""

    def receive(self, channel: str) -> Awaitable[dict]:
        # channels-redis reaches the per-loop layer through a coroutine of its own (and a
        # partial) on every call; a waiting receive is what every idle socket has in flight.
        return self._get_layer().receive(channel)

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
