"""A small asyncio queue for the two queues every open websocket holds (tuned runtime).

Each socket has daphne's application input queue and, with the pub/sub layer, its
channel's message queue. An `asyncio.Queue` is about 2.6 KiB even when empty (three
deques and an Event with a fourth); idle sockets are many and their queues are empty
almost always. This one is two slots and an empty list, for the part of the Queue API
daphne and channels-redis use: `get`, `get_nowait`, `put_nowait`, `qsize`, `empty`.

Unbounded unless a subclass sets `maxsize`; then `put_nowait` on a full queue drops the item
and calls `overflowed()` instead of raising (the producers, daphne's protocol and
channels-redis' reader, have nowhere to take a QueueFull).
"""

from __future__ import annotations

import asyncio
from typing import Any


class SlimQueue:
    __slots__ = ("_items", "_getters")
    maxsize = 0  # 0: unbounded (a class attribute: nothing more per queue)

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future] | None = None  # made when someone waits

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        if self.maxsize and len(self._items) >= self.maxsize:
            self.overflowed(item)
            return
        self._items.append(item)
        self._wake_one()

    def overflowed(self, item: Any) -> None:
        """Called with an item dropped at a full queue."""

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # no-op if it was already woken
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                # Woken, then cancelled before it ran: hand the wake-up to the next getter.
                if self._items:
                    self._wake_one()
                raise
        return self._items.pop(0)

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None
