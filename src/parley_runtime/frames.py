"""When a client's frame reached the process, carried beside the ASGI event, not in it.

The tuned runtime's input queue (parley_runtime.websocket.InputQueue) hands the application
each `websocket.receive` event as a `ReceivedFrame`: a dict with exactly the keys and values
daphne put in it (the ASGI spec's), plus an attribute outside the mapping with the
`time.monotonic()` at which the queue took it. `received_at(message)` reads it; it is None
for any other event and on the stock runtime, whose queue stamps nothing.

The stamp never leaves the process: a pickled or copied frame is a plain dict again. This
module imports nothing of daphne (the HTTP processes import the consumers too).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class ReceivedFrame(dict):
    """An ASGI event (its keys and values untouched) and when it reached the process."""

    __slots__ = ("received_at",)

    received_at: float

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle and copy as the plain event: the monotonic stamp means nothing elsewhere.
        return (dict, (dict(self),))


def stamped(event: dict) -> ReceivedFrame:
    """`event`, as a ReceivedFrame stamped now."""
    frame = ReceivedFrame(event)
    frame.received_at = time.monotonic()
    return frame


def received_at(message: Mapping[str, Any]) -> float | None:
    """When the tuned runtime's input queue took this event (time.monotonic()), or None: not
    a stamped frame (the stock runtime, a test communicator, any other event)."""
    return getattr(message, "received_at", None)
