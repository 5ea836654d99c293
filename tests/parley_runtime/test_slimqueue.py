"""SlimQueue: the asyncio.Queue subset daphne and the pub/sub layer use, per socket."""

from __future__ import annotations

import asyncio
import sys

import pytest

from parley_runtime.slimqueue import SlimQueue


async def test_items_come_out_in_order_and_get_waits_for_a_put():
    q = SlimQueue()
    q.put_nowait(1)
    q.put_nowait(2)
    assert (q.qsize(), q.empty()) == (2, False)
    assert [await q.get(), q.get_nowait()] == [1, 2]
    assert q.empty()
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    waiting = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    q.put_nowait("late")
    assert await asyncio.wait_for(waiting, 1) == "late"


async def test_several_getters_each_get_one_item():
    q = SlimQueue()
    getters = [asyncio.ensure_future(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for item in "abc":
        q.put_nowait(item)
    assert sorted(await asyncio.wait_for(asyncio.gather(*getters), 1)) == ["a", "b", "c"]


async def test_a_cancelled_getter_loses_no_item():
    q = SlimQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("only")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: the item must reach `second`
    assert await asyncio.wait_for(second, 1) == "only"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert q.empty() and q._getters is None


async def test_cancelling_a_waiting_get_leaves_the_queue_usable():
    q = SlimQueue()
    waiting = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    q.put_nowait(1)
    assert await asyncio.wait_for(q.get(), 1) == 1


def test_an_idle_queue_is_a_fraction_of_an_asyncio_queue():
    def size(q) -> int:
        parts = [q, *getattr(q, "__dict__", {}).values()]
        return sum(sys.getsizeof(p) for p in parts if not isinstance(p, (int, type(None))))

    assert size(SlimQueue()) * 5 < size(asyncio.Queue())


def test_a_bounded_queue_drops_past_its_size_and_says_so():
    import config.asgi  # noqa: F401 (wires the queue's counter)
    from parley_runtime.layers import ChannelQueue

    class Small(ChannelQueue):
        __slots__ = ()
        maxsize = 3

    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("parley_layer_messages_dropped_total") or 0
    q = Small()
    for i in range(5):
        q.put_nowait(i)
    assert [q.get_nowait() for _ in range(q.qsize())] == [0, 1, 2]
    assert REGISTRY.get_sample_value("parley_layer_messages_dropped_total") == before + 2


def test_the_input_queue_drops_a_flood_but_never_the_disconnect():
    from parley_runtime.websocket import InputQueue

    class Small(InputQueue):
        __slots__ = ()
        maxsize = 2

    q = Small()
    for i in range(4):
        q.put_nowait({"type": "websocket.receive", "text": str(i)})
    q.put_nowait({"type": "websocket.disconnect", "code": 1006})
    items = [q.get_nowait() for _ in range(q.qsize())]
    assert [m.get("text") for m in items[:2]] == ["0", "1"]
    assert items[-1]["type"] == "websocket.disconnect" and len(items) == 3


def test_the_socket_queues_are_bounded_by_the_setting(settings):
    import config.asgi  # noqa: F401 (sets the bound)
    from parley_runtime.layers import ChannelQueue

    assert ChannelQueue.maxsize == settings.CHAT_SOCKET_QUEUE_LIMIT > 0
