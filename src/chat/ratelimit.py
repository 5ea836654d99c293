"""Per-socket limits on what a client may send: a plain object, no socket, no clock of its
own (tests pass `now`)."""

from __future__ import annotations

import bisect
import time

RATE_WINDOW_SECONDS = 10.0
FRAME_RATE_FACTOR = 5  # frames of any kind per window, as a multiple of the message limit
TYPING_THROTTLE_SECONDS = 2.5


class SendLimits:
    """`messages` chat messages and `messages * FRAME_RATE_FACTOR` frames of any kind per
    RATE_WINDOW_SECONDS, and at most one typing broadcast per TYPING_THROTTLE_SECONDS.

    `strikes` counts messages refused in a row: a client that keeps sending past its limit
    is flooding, not typing fast (the consumer closes it)."""

    __slots__ = ("messages", "recent_sends", "recent_frames", "strikes", "last_typing")

    def __init__(self, messages: int) -> None:
        self.messages = messages
        # Lists, not deques: an empty deque is ~600 bytes, and idle sockets are many.
        self.recent_sends: list[float] = []
        self.recent_frames: list[float] = []
        self.strikes = 0
        self.last_typing = float("-inf")

    def frame_ok(self, now: float | None = None) -> bool:
        """Any frame counts (typing, read, malformed): a bound on work per socket."""
        now = time.monotonic() if now is None else now
        frames = self.recent_frames
        del frames[: bisect.bisect_left(frames, now - RATE_WINDOW_SECONDS)]
        frames.append(now)
        return len(frames) <= self.messages * FRAME_RATE_FACTOR

    def message_ok(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        sends = self.recent_sends
        del sends[: bisect.bisect_left(sends, now - RATE_WINDOW_SECONDS)]
        if len(sends) >= self.messages:
            self.strikes += 1
            return False
        self.strikes = 0
        sends.append(now)
        return True

    @property
    def flooding(self) -> bool:
        """Refused more messages in a row than the limit allows in a whole window."""
        return self.strikes > self.messages

    def typing_ok(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self.last_typing < TYPING_THROTTLE_SECONDS:
            return False
        self.last_typing = now
        return True
