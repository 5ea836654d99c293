"""Admission of sends: past capacity, a message is refused to its sender at once (an error
fragment with its client_id and a retry hint; the page keeps the text and retries with
backoff), never accepted and then delivered seconds late.

Why: every accepted message becomes one store and a frame per member, so a process that
accepts more than it can deliver falls behind on every socket at once, and every message
arrives late (loadtest/RESULTS.md, "Past the knee").
Four signals, all local and cheap:

- event-loop lag: how late this process's loop runs a timer due every TICK_SECONDS. Fan-out,
  frames in and out and the layer all run on the loop; when it lags, every delivery is late.
- delivery delay: how much longer than usual broadcasts took from their publisher to this
  process's hub: queues in the layer and in this process, which loop lag alone misses. Each
  carries its publish time on its publisher's clock, so a delay is measured against that
  publisher's own fastest recent one (`PeerDelays`): a peer whose clock is off by a second
  shifts both alike, and refuses nothing.
- store wait: how long a call waits for the one database thread, or a send for one of the
  event loop's store connections (parley.dbcalls, parley.loopdb).
- frame wait: how long the send's frame waited in its socket's input queue (config.serve_ws
  stamps frames on arrival) behind the socket's earlier frames.

Lag and delay are smoothed (a moving average per tick), so a single pause (a GC, a slow
callback) does not refuse anything; a sustained one does.

A send is refused while any is over its limit (CHAT_OVERLOAD_LAG_SECONDS,
CHAT_OVERLOAD_DELIVERY_SECONDS, CHAT_OVERLOAD_STORE_WAIT_SECONDS,
CHAT_OVERLOAD_QUEUE_SECONDS). Nothing that multiplies
with sockets runs for a refused send.
"""

from __future__ import annotations

import asyncio
import time

from django.conf import settings

from parley import dbcalls, metrics
from parley.perloop import per_loop

TICK_SECONDS = 0.05
# A publisher's fastest delivery is kept over two windows of this long (the older one
# dropped as a new one starts): its clock offset plus the fastest the path ever was.
BASELINE_WINDOW_SECONDS = 60.0


class PeerDelays:
    """How much longer than its fastest recent delivery each publisher's broadcast took.

    The raw delay (now - publish time) mixes the publisher's clock offset with the time in
    queues; the smallest raw delay seen from the publisher lately is its offset plus the
    fastest path, so the excess over it is the queueing alone, whatever the clocks say. Under
    sustained overload sends are refused, the queues drain, and the fastest delay comes back
    within a window. A publisher whose clock steps back reads late until its window passes."""

    __slots__ = ("windows",)

    def __init__(self) -> None:
        # publisher -> (window start, smallest raw delay in it, smallest in the one before)
        self.windows: dict[str, tuple[float, float, float]] = {}

    def excess(self, publisher: str, raw: float, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        start, current, previous = self.windows.get(publisher, (now, raw, raw))
        if now - start > BASELINE_WINDOW_SECONDS:
            start, current, previous = now, raw, current
        current = min(current, raw)
        self.windows[publisher] = (start, current, previous)
        if len(self.windows) > 1000:  # publishers come and go with processes
            self.windows.pop(next(iter(self.windows)))
        return max(0.0, raw - min(current, previous))


class Admission:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lag = 0.0  # seconds, smoothed
        self.delay = 0.0  # seconds, smoothed
        self.delays: list[float] = []  # delivery delays seen since the last tick
        self.peers = PeerDelays()
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0
        self.refusing: str | None = None  # why sends are refused, as of the last tick

    def start(self) -> None:
        if self.timer is None:
            self.due = self.loop.time() + TICK_SECONDS
            self.timer = self.loop.call_at(self.due, self._tick)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.lag = self.delay = 0.0
        self.refusing = None
        self.delays.clear()

    def note_delay(self, publisher: str, published_at: float) -> None:
        """A broadcast published at `published_at` (wall clock, the publisher's) reached this
        process's hub now."""
        if self.timer is not None and len(self.delays) < 1000:
            self.delays.append(self.peers.excess(publisher, time.time() - published_at))

    def _tick(self) -> None:
        now = self.loop.time()
        lag = max(0.0, now - self.due)
        self.lag = self.lag * 0.7 + lag * 0.3
        delay = max(self.delays) if self.delays else 0.0  # none: nothing is queued
        self.delays.clear()
        self.delay = self.delay * 0.7 + delay * 0.3
        self.due = now + TICK_SECONDS
        self.timer = self.loop.call_at(self.due, self._tick)
        self.refusing = self._why()
        metrics.EVENT_LOOP_LAG.set(round(self.lag, 3))

    def _why(self) -> str | None:
        if self.lag > settings.CHAT_OVERLOAD_LAG_SECONDS:
            return "lag"
        if self.delay > settings.CHAT_OVERLOAD_DELIVERY_SECONDS:
            return "delivery_delay"
        if dbcalls.gate.queue_delay() > settings.CHAT_OVERLOAD_STORE_WAIT_SECONDS:
            return "store_wait"
        return None

    def current_lag(self) -> float:
        return self.lag if self.timer is not None else 0.0

    def refusal(self, received_at: float | None = None) -> str | None:
        """Why a send would be refused now ("queued", "lag", "delivery_delay", "store_wait"),
        or None to take it. `received_at`: when its frame reached the process (monotonic).
        The process-wide signals are judged once a tick, not once a send: a process past
        capacity refuses thousands a second."""
        if received_at is not None and (
            time.monotonic() - received_at > settings.CHAT_OVERLOAD_QUEUE_SECONDS
        ):
            return "queued"  # this frame waited behind others longer than a send may
        return self.refusing if self.timer is not None else None


# This event loop's admission (parley.perloop).
admission = per_loop(Admission)
