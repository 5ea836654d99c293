"""Process-wide helpers (heartbeat, hubs, admission) exist once per event loop: production
runs one loop per process, tests run many in one process."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(factory: Callable[[asyncio.AbstractEventLoop], T]) -> Callable[[], T]:
    """A function returning the running loop's instance, made by `factory(loop)` on first use."""
    instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get() -> T:
        loop = asyncio.get_running_loop()
        found = instances.get(loop)
        if found is None:
            found = instances[loop] = factory(loop)
        return found

    return get
