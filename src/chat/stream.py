"""A conversation's stream of stored messages, as one process keeps it: the synchronous core
of delivery, with no socket, database or clock, so tests drive it step by step
(docs/delivery.md). chat.delivery runs it.

- `Position(seq, epoch)`: where a history is; `Row(seq, frame)`: one stored message as every
  socket is sent it (chat.positions). Frames concatenate: a batch is its rows' frames
  joined, cut by `frames()` so no websocket message passes the frame limit (autobahn
  applies CHAT_MAX_FRAME_BYTES to what the server sends too).
- `Order`: what a process has handed out of one conversation, what arrived ahead of it, what
  is missing.
- `SocketCursor`: what one socket has been sent, and what it does with what it is handed.
- `judge()`: the one start-over rule. Only evidence the server holds (the database, what it
  handed out or noted) starts a new epoch; a page's claim starts over that page alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from chat.positions import Position, Row

__all__ = ["Position", "Row"]

BATCH = 200  # rows per database read
HELD_LIMIT = BATCH  # held rows past this: read the database now
RECENT_LIMIT = BATCH  # rows kept for sockets that (re)connect a little behind
CURSOR_HOLD_LIMIT = 5 * BATCH  # rows a catching-up socket keeps; past it, it reads again


def frame_bytes(frame: str) -> int:
    """A frame's size on the wire (UTF-8), which is what the frame limit counts."""
    return len(frame) if frame.isascii() else len(frame.encode())


def frames(parts: Iterable[str], limit: int) -> list[str]:
    """`parts` (whole frames or fragments) joined in order into as few websocket messages as
    fit in `limit` bytes each. A part alone over the limit is refused at startup
    (chat.apps checks the largest message fits)."""
    out: list[str] = []
    batch: list[str] = []
    size = 0
    for part in parts:
        n = frame_bytes(part)
        if batch and size + n > limit:
            out.append("".join(batch))
            batch, size = [], 0
        batch.append(part)
        size += n
    if batch:
        out.append("".join(batch))
    return out


# --- the start-over rule ------------------------------------------------------------------


class Verdict(enum.Enum):
    REPLAY = "replay"  # send what was missed
    RELOAD = "reload"  # this page alone starts over (reload); nothing shared changes
    NEW_EPOCH = "new_epoch"  # the history went back under the server: every page starts over


def went_back(db: Position, seen: int, epoch: str) -> bool:
    """The server handed out or noted `seen` in `epoch`, and the database's history is that
    epoch with fewer messages: it was restored from an older copy without a new epoch."""
    return epoch == db.epoch and seen > db.seq


def judge(db: Position, claim: Position | None, server_seen: int, cap: int) -> tuple[Verdict, str]:
    """What a connecting socket does. `claim`: the page's position (None: it gave no epoch,
    and `after` is clamped); `server_seen`: the most this server handed out or noted in the
    database's epoch. Returns the verdict and why."""
    if claim is None:
        return Verdict.REPLAY, ""
    if claim.epoch != db.epoch:
        return Verdict.RELOAD, "restored"  # the page's history is another
    if claim.seq > db.seq:
        if went_back(db, server_seen, db.epoch):
            return Verdict.NEW_EPOCH, "restored"
        return Verdict.RELOAD, "ahead"  # only the page says so
    if db.seq - claim.seq > cap:
        return Verdict.RELOAD, "behind"
    return Verdict.REPLAY, ""


# --- a socket's cursor ----------------------------------------------------------------------


class Offer(enum.Enum):
    SEND = "send"  # send the returned rows now
    HOLD = "hold"  # catching up: kept (or, past the hold limit, read later from the database)
    SKIP = "skip"  # already sent
    READ = "read"  # behind the stream: start catching up (the rows are held meanwhile)


class SocketCursor:
    """`last_sent`: the newest sequence sent to the client. `held`: rows handed over while
    catching up (None: live). Nothing is sent twice or out of order: every decision is by
    sequence number."""

    __slots__ = ("last_sent", "held", "hold_limit")

    def __init__(self, last_sent: int, hold_limit: int = CURSOR_HOLD_LIMIT) -> None:
        self.last_sent = last_sent
        self.held: list[Row] | None = []  # a new socket catches up first
        self.hold_limit = hold_limit

    @property
    def catching_up(self) -> bool:
        return self.held is not None

    def offer(self, rows: Sequence[Row]) -> tuple[Offer, list[Row]]:
        """Consecutive rows from the stream: what to do with them, and the rows to send."""
        if self.held is not None:
            if len(self.held) < self.hold_limit:
                self.held.extend(rows)  # past the limit: read again after
            return Offer.HOLD, []
        last = self.last_sent
        if rows[-1].seq <= last:
            return Offer.SKIP, []  # already sent (a catch-up read got further)
        if rows[0].seq > last + 1:
            self.held = list(rows)  # a catch-up that dropped rows: read what is missing
            return Offer.READ, []
        fresh = [row for row in rows if row.seq > last] if rows[0].seq <= last else list(rows)
        self.last_sent = fresh[-1].seq
        return Offer.SEND, fresh

    def start_catch_up(self) -> None:
        if self.held is None:
            self.held = []

    def sent(self, rows: Sequence[Row]) -> None:
        """Backlog rows (consecutive, after last_sent) were sent."""
        if rows:
            self.last_sent = rows[-1].seq

    def end_catch_up(self) -> tuple[Offer, list[Row]]:
        """The backlog is sent: SEND the held rows that follow on (the socket is live again),
        SKIP when none is newer, or READ again when some were dropped while reading."""
        held, self.held = self.held or [], None
        fresh = [row for row in held if row.seq > self.last_sent]
        if not fresh:
            return Offer.SKIP, []
        if fresh[0].seq == self.last_sent + 1:
            return self.offer(fresh)
        self.held = []
        return Offer.READ, []

    def abandon_catch_up(self) -> None:
        """The catch-up failed (the socket is being closed): back to live."""
        self.held = None

    def start_over(self, newest: int) -> None:
        """The history was replaced: go on from the database's newest message."""
        self.last_sent = newest
        self.held = None


class Order:
    """What a process has handed out of one conversation (`position`, None until the first
    socket's read says where the history is), rows that arrived ahead of it (`held`), the
    newest sequence known to exist (`expected`), and the last RECENT_LIMIT rows handed out.
    No I/O: every method answers what to hand out now."""

    def __init__(self) -> None:
        self.position: Position | None = None
        self.held: dict[int, str] = {}
        self.expected = 0
        self.recent: dict[int, str] = {}

    def start(self, position: Position) -> list[Row]:
        """The history is at `position` (the first socket's read, or a restart)."""
        self.position = position
        self.expected = position.seq
        self.recent.clear()
        for seq in [s for s in self.held if s <= position.seq]:
            del self.held[seq]
        return self._follow_on([])

    def arrive(self, row: Row) -> list[Row]:
        """A stored message's row (from the layer, or stored here). Returns the rows to hand
        out now: none if it is a duplicate, or held until what precedes it arrives."""
        if self.position is None:
            # The first socket's read says where we are. Bounded: past HELD_LIMIT the oldest
            # go, and that read finds them in the database instead.
            self.held[row.seq] = row.frame
            if len(self.held) > HELD_LIMIT:
                del self.held[min(self.held)]
            return []
        if row.seq <= self.position.seq:
            return []  # handed out already (our own broadcast coming back, a duplicate)
        if row.seq > self.position.seq + 1:
            self.held[row.seq] = row.frame
            self.expected = max(self.expected, row.seq - 1)
            return []
        return self._follow_on([row])

    def expect(self, upto: int) -> None:
        """Sequences up to `upto` exist (a socket's read, the heartbeat): read if they do not
        arrive."""
        self.expected = max(self.expected, upto)

    def missing(self) -> tuple[int, int | None] | None:
        """(after, upto) of what is known to exist and has not been handed out (upto None:
        everything after), or None when nothing is."""
        if self.position is None:
            return None
        last = self.position.seq
        upto = min(self.held) - 1 if self.held else self.expected
        return (last, upto) if upto > last else None

    def fill(self, rows: Sequence[Row]) -> list[Row]:
        """Rows read from the database (consecutive, oldest first): the ones to hand out."""
        if self.position is None:
            return []
        fresh = [row for row in rows if row.seq > self.position.seq]
        if not fresh or fresh[0].seq != self.position.seq + 1:
            return []
        return self._follow_on(fresh)

    def settle(self) -> list[Row]:
        """The database has no more of what was expected: something outside it (a Redis that
        kept a newer number) disagrees. The held rows go out as they are, and nothing past
        what was handed out is expected any more."""
        if self.position is None:
            return []
        rows: list[Row] = []
        if self.held:
            first = min(self.held)
            frame = self.held.pop(first)
            self.position = Position(first - 1, self.position.epoch)
            rows = self._follow_on([Row(first, frame)])
        self.expected = min(self.expected, self.position.seq)
        return rows

    def recent_after(self, after: int) -> list[Row] | None:
        """The rows after `after` handed out here, if they are all still kept."""
        if self.position is None:
            return None
        if after >= self.position.seq:
            return []
        if after + 1 not in self.recent:
            return None
        return [Row(seq, self.recent[seq]) for seq in range(after + 1, self.position.seq + 1)]

    def _follow_on(self, rows: list[Row]) -> list[Row]:
        """`rows` (following on from position, possibly none) and the held rows that follow
        on from them: handed out now."""
        assert self.position is not None
        held = self.held
        last = rows[-1].seq if rows else self.position.seq
        while (frame := held.pop(last + 1, None)) is not None:
            last += 1
            rows.append(Row(last, frame))
        if not rows:
            return rows
        self.position = Position(last, self.position.epoch)
        recent = self.recent
        for row in rows:
            recent[row.seq] = row.frame
        while len(recent) > RECENT_LIMIT:
            del recent[next(iter(recent))]
        for seq in [s for s in held if s <= last]:
            del held[seq]
        return rows
