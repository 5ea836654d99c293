"""The run's history: every operation, fault and event, time-stamped, and the minimal part of
it that concerns one failure (its member and its sequence numbers), for the report.

An event's `seqs` are the sequence numbers it is about, as (first, last) ranges in the
history epoch `epoch` of conversation `room`; `who` is a member's username, or "" for the
stack (faults). Appending is thread-safe (one list.append).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

Ranges = tuple[tuple[int, int], ...]

# Event kinds that say where a page is (connections, reloads): always part of a member's
# minimal history.
LIFECYCLE = {
    "connect",
    "open",
    "close",
    "connect-failed",
    "dead",
    "reset",
    "reload",
    "loaded",
    "load-failed",
    "offline",
    "online",
    "drop",
    "pause",
    "gap",
    "behind",
    "left",
}


FLOAT_RE = re.compile(r"\d+\.\d+")
# Repeats of these (the same but for their durations) are folded.
FOLDABLE = {"connect", "open", "close", "connect-failed", "load-failed", "refused-busy", "resend"}


# One line at a time on stdout, from whichever thread (several runs may print at once).
PRINT_LOCK = threading.Lock()


def say(line: str) -> None:
    with PRINT_LOCK:
        print(line, flush=True)


def ranges(seqs: Iterable[int]) -> Ranges:
    """Sorted sequence numbers as (first, last) runs."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return tuple(out)


def fmt_ranges(rs: Ranges, limit: int = 6) -> str:
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in rs]
    if len(parts) > limit:
        parts = [*parts[: limit - 1], f"... ({len(parts) - limit + 1} more runs)", parts[-1]]
    return ",".join(parts) if parts else "-"


def overlaps(a: Ranges, b: Ranges) -> bool:
    return any(x0 <= y1 and y0 <= x1 for x0, x1 in a for y0, y1 in b)


@dataclass(slots=True)
class Event:
    t: float
    who: str
    kind: str
    text: str
    room: int = 0
    epoch: str = ""
    seqs: Ranges = ()
    cids: tuple[str, ...] = ()
    fault: bool = False


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    echo: bool = False  # print faults and stack events as they happen
    prefix: str = ""  # before each printed line (which run, when several run at once)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def at(self, monotonic: float) -> float:
        return monotonic - self.t0

    def add(
        self,
        who: str,
        kind: str,
        text: str,
        *,
        room: int = 0,
        epoch: str = "",
        seqs: Ranges = (),
        cids: Iterable[str] = (),
        fault: bool = False,
        t: float | None = None,
    ) -> Event:
        event = Event(
            self.now() if t is None else t, who, kind, text, room, epoch, seqs, tuple(cids), fault
        )
        self.events.append(event)
        if self.echo and fault:
            say(f"{self.prefix}  {fmt_event(event)}")
        return event

    def fault(self, kind: str, text: str, **kw) -> Event:
        return self.add("", kind, text, fault=True, **kw)

    def of(self, who: str) -> Iterator[Event]:
        return (e for e in self.events if e.who == who)


def fmt_event(e: Event) -> str:
    who = (e.who or "fault") if e.fault else (e.who or "stack")
    return f"t={e.t:7.2f}  {who:<10} {e.kind:<14} {e.text}"


def collapse(events: list[Event], limit: int) -> list[str]:
    """Lines for `events`, with repeats folded: a block of up to 8 lines that comes again and
    again, the same but for its times (a page reconnecting into the same refusal), is shown
    once with how often it repeats. Then cut to `limit` lines (the first and last kept)."""
    keys = [(e.who, e.kind, _shape(e.text)) for e in events]
    lines: list[str] = []
    i = 0
    while i < len(events):
        folded = False
        for k in range(1, 9):
            block = keys[i : i + k]
            if len(block) < k or not all(e.kind in FOLDABLE for e in events[i : i + k]):
                break
            m = 1
            while keys[i + m * k : i + (m + 1) * k] == block:
                m += 1
            if m >= 3:
                lines += [fmt_event(e) for e in events[i : i + k]]
                last = events[i + m * k - 1]
                lines.append(
                    f"{'':9}  ... the {k} line{'s' if k > 1 else ''} above "
                    f"{m - 1} times more, the last at t={last.t:.2f}"
                )
                i += m * k
                folded = True
                break
        if not folded:
            lines.append(fmt_event(events[i]))
            i += 1
    if len(lines) > limit:
        head = limit * 2 // 3
        tail = limit - head - 1
        lines = [
            *lines[:head],
            f"... {len(lines) - head - tail} lines left out ...",
            *lines[-tail:],
        ]
    return lines


def _shape(text: str) -> str:
    """The text with its durations masked: repeated reconnects differ only in those."""
    return FLOAT_RE.sub("#", text)
