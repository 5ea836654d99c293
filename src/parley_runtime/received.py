"""When a websocket frame reached the process (tuned runtime: daphne's input queue stamps it,
parley_runtime.websocket.InputQueue); None on the stock runtime."""

from __future__ import annotations


def received_at(message: dict) -> float | None:
    """The monotonic time the frame `message` reached the process, if it was stamped."""
    return message.get("received_at")
