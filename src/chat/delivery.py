"""What one socket has been sent of its conversation, and what it does with what its hub
hands it: the per-socket half of the delivery protocol (docs/delivery.md), as a plain object
with no socket and no database, so tests drive it step by step.

The hub (chat.hub) orders and heals a conversation's broadcasts once per process and hands
every local socket the same consecutive rows. A socket still catching up (reading its
backlog after a connect, or after falling behind) holds what it is handed; once the backlog
is sent, the held rows that follow on are sent, and if some were dropped meanwhile it reads
again. Nothing is sent twice or out of order: every decision is by sequence number.
"""

from __future__ import annotations

import enum

Row = tuple[int, str]  # (sequence, frame)


class Offer(enum.Enum):
    SEND = "send"  # send the returned rows now
    HOLD = "hold"  # catching up: kept (or, past the hold limit, read later from the database)
    SKIP = "skip"  # already sent
    READ = "read"  # behind the hub: start catching up (the rows are held meanwhile)


class SocketCursor:
    """`last_sent`: the newest sequence sent to the client. `held`: rows handed over while
    catching up (None: live)."""

    __slots__ = ("last_sent", "held", "hold_limit")

    def __init__(self, last_sent: int, hold_limit: int) -> None:
        self.last_sent = last_sent
        self.held: list[Row] | None = []  # a new socket catches up first
        self.hold_limit = hold_limit

    @property
    def catching_up(self) -> bool:
        return self.held is not None

    def offer(self, rows: list[Row]) -> tuple[Offer, list[Row]]:
        """Consecutive rows from the hub: what to do with them, and the rows to send."""
        if self.held is not None:
            if len(self.held) < self.hold_limit:
                self.held.extend(rows)  # past the limit: read again after
            return Offer.HOLD, []
        last = self.last_sent
        if rows[-1][0] <= last:
            return Offer.SKIP, []  # already sent (a catch-up read got further)
        if rows[0][0] > last + 1:
            self.held = list(rows)  # a catch-up that dropped frames: read what is missing
            return Offer.READ, []
        if rows[0][0] <= last:
            rows = [row for row in rows if row[0] > last]
        self.last_sent = rows[-1][0]
        return Offer.SEND, rows

    def start_catch_up(self) -> None:
        if self.held is None:
            self.held = []

    def sent(self, rows: list[Row]) -> None:
        """Backlog rows (consecutive, after last_sent) were sent."""
        if rows:
            self.last_sent = rows[-1][0]

    def end_catch_up(self) -> tuple[Offer, list[Row]]:
        """The backlog is sent: SEND the held rows that follow on (the socket is live again),
        SKIP when none is newer, or READ again when some were dropped while reading."""
        held, self.held = self.held or [], None
        fresh = [row for row in held if row[0] > self.last_sent]
        if not fresh:
            return Offer.SKIP, []
        if fresh[0][0] == self.last_sent + 1:
            return self.offer(fresh)
        self.held = []
        return Offer.READ, []

    def abandon_catch_up(self) -> None:
        """The catch-up failed (the socket is being closed): back to live."""
        self.held = None

    def start_over(self, newest: int) -> None:
        """The history was replaced (a restore): go on from the database's newest message."""
        self.last_sent = newest
        self.held = None
