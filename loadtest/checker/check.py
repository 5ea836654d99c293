"""The checks: what each page shows against the database, and every send against what was
stored. Pure functions of the pages' state, the sends and a read of the database.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from loadtest.checker.history import Ranges, fmt_ranges, ranges
from loadtest.checker.page import Send, ViewEntry


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    pk: int
    sender: str
    sender_id: int
    cid: str | None
    body_hash: int
    length: int


@dataclass
class Db:
    """The database as the checker read it: per conversation its epoch, last_seq and
    messages by sequence."""

    epochs: dict[int, str]
    last_seqs: dict[int, int]
    messages: dict[int, dict[int, Stored]]

    def by_cid(self) -> dict[str, list[tuple[int, Stored]]]:
        out: dict[str, list[tuple[int, Stored]]] = defaultdict(list)
        for room, rows in self.messages.items():
            for row in rows.values():
                if row.cid:
                    out[row.cid].append((room, row))
        return out


@dataclass
class Restore:
    n: int
    dumped_at: float
    began: float  # writers told to stop
    stopped: float  # every writer gone: nothing received after this is from before
    ended: float
    snapshot: set[str]  # the client_ids the restored database holds
    dump_last_seqs: dict[int, int]


@dataclass
class PageState:
    """A copy of one page's state, taken under its lock."""

    who: str
    room: int
    epoch: str
    last_seq: int
    view: list[ViewEntry]
    open: bool
    offline: bool
    reloading: bool
    dead: str | None
    connections: list[tuple[float | None, float, int]]
    open_for: float  # how long the current socket has been open (0: not open)


# A socket open for less than this when the pages are checked (after they had time to
# settle) is not "connected again": it is a page in a reconnect loop, caught between two
# closes.
STEADY_SECONDS = 2.0


@dataclass
class Failure:
    kind: str
    summary: str
    when: str
    who: str = ""
    room: int = 0
    epoch: str = ""
    seqs: Ranges = ()
    cids: tuple[str, ...] = ()
    t: float = 0.0  # when it was found (history time)


def check_pages(pages: list[PageState], db: Db, when: str) -> list[Failure]:
    failures = []
    for p in pages:

        def fail(kind: str, summary: str, seqs: Ranges = (), p=p) -> None:
            failures.append(
                Failure(
                    kind, summary, when, who=p.who, room=p.room, epoch=db.epochs[p.room], seqs=seqs
                )
            )

        expected = db.messages[p.room]
        last = db.last_seqs[p.room]
        if not p.open or p.open_for < STEADY_SECONDS:
            state = (
                p.dead
                if p.dead
                else "offline"
                if p.offline
                else "reloading the page"
                if p.reloading
                else f"its socket opened {p.open_for:.1f}s ago"
                if p.open
                else "reconnecting"
            )
            fail("not-connected", f"not connected ({state}): {connections_tail(p.connections)}")
        if p.epoch != db.epochs[p.room]:
            fail(
                "stale-epoch",
                f"page epoch {p.epoch!r}, the conversation's is {db.epochs[p.room]!r}",
            )
        seen: dict[int, ViewEntry] = {}
        dups, disorder = [], []
        prev = 0
        for v in p.view:
            if v.seq in seen:
                dups.append(v.seq)
            seen[v.seq] = v
            if v.seq <= prev:
                disorder.append(v.seq)
            prev = max(prev, v.seq)
        holes = [s for s in expected if s not in seen]
        extra = [s for s in seen if s not in expected]
        wrong = [
            s
            for s, v in seen.items()
            if s in expected
            and (
                v.cid != expected[s].cid
                or v.sender_id != expected[s].sender_id
                or v.body_hash != expected[s].body_hash
            )
        ]
        if holes:
            fail(
                "holes",
                f"{len(holes)} of {last} stored messages never shown: {fmt_ranges(ranges(holes))}",
                ranges(holes),
            )
        if extra:
            fail(
                "extra",
                f"shows {len(extra)} sequence numbers the database does not hold: "
                f"{fmt_ranges(ranges(extra))}",
                ranges(extra),
            )
        if wrong:
            details = []
            for s in wrong[:3]:
                v, e = seen[s], expected[s]
                details.append(
                    f"seq {s}: page cid={v.cid} sender={v.sender_id} "
                    f"{v.length} chars; stored cid={e.cid} sender={e.sender_id} "
                    f"{e.length} chars"
                )
            fail(
                "wrong",
                f"{len(wrong)} messages differ from the stored ones "
                f"({fmt_ranges(ranges(wrong))}): " + "; ".join(details),
                ranges(wrong),
            )
        if dups:
            fail("duplicates", f"shows {fmt_ranges(ranges(dups))} twice", ranges(dups))
        if disorder:
            fail(
                "order",
                f"shows {fmt_ranges(ranges(disorder))} after a later message",
                ranges(disorder),
            )
    return failures


def connections_tail(connections: list[tuple[float | None, float, int]]) -> str:
    """'its last 23 connections ended with 1011 (each within 0.9 s of opening), since
    t=31.2'."""
    if not connections:
        return "it never connected"
    code = connections[-1][2]
    run = []
    for c in reversed(connections):
        if c[2] != code:
            break
        run.append(c)
    run.reverse()
    opened = [end - start for start, end, _ in run if start is not None]
    failed = len(run) - len(opened)
    text = f"its last {len(run)} connections ended with {code}"
    if opened:
        text += f" ({len(opened)} opened, each for at most {max(opened):.1f}s"
        text += f"; {failed} refused at the handshake)" if failed else ")"
    else:
        text += " (refused at the handshake)"
    return text + f", since t={run[0][1] if run[0][0] is None else run[0][0]:.1f}"


def check_sends(sends: list[Send], db: Db, restores: list[Restore], when: str) -> list[Failure]:
    failures = []
    stored = db.by_cid()
    mine = {s.cid for s in sends}
    unconfirmed: dict[tuple[str, int], list[tuple[Send, Ranges]]] = defaultdict(list)
    for s in sends:
        rows = stored.get(s.cid, [])
        seqs = ranges(r.seq for _, r in rows)

        def fail(kind: str, summary: str, s=s, seqs=seqs) -> None:
            failures.append(
                Failure(
                    kind,
                    summary,
                    when,
                    who=s.who,
                    room=s.room,
                    epoch=db.epochs.get(s.room, ""),
                    seqs=seqs,
                    cids=(s.cid,),
                )
            )

        if len(rows) > 1:
            fail("stored-twice", f"{s.cid} stored {len(rows)} times: seqs {fmt_ranges(seqs)}")
        if s.confirmed is not None and not rows:
            lost_by = [
                r.n for r in restores if s.confirmed[0] < r.stopped and s.cid not in r.snapshot
            ]
            if not lost_by:
                fail(
                    "confirmed-lost",
                    f"{s.cid} was confirmed (seq {s.confirmed[1]}, epoch "
                    f"{s.confirmed[2]}, t={s.confirmed[0]:.1f}) but is not in the database",
                )
        if s.refused is not None and rows:
            fail(
                "refused-but-stored",
                f"{s.cid} was refused for good ({s.refused[1]!r} at t={s.refused[0]:.1f}) but "
                f"is stored as seq {fmt_ranges(seqs)}: the page gave the text back, so the "
                "person sends it again and it is there twice (a lost reply made a duplicate)",
            )
        if s.confirmed is None and s.refused is None:
            unconfirmed[(s.who, s.room)].append((s, seqs))
        for _, row in rows:
            if row.body_hash != s.body_hash:
                fail(
                    "body-changed",
                    f"{s.cid}: stored text ({row.length} chars) is not the "
                    f"text sent ({s.length} chars)",
                )
            if row.sender != s.who:
                fail("wrong-sender", f"{s.cid} stored as sent by {row.sender}")
    for (who, room), items in unconfirmed.items():
        in_db = [(s, seqs) for s, seqs in items if seqs]
        shown = "; ".join(
            f"{s.cid[:8]} ({s.length} chars, sent {s.sends}x, busy {s.busy_refusals}x"
            + (f", stored as seq {fmt_ranges(seqs)})" if seqs else ", not stored)")
            for s, seqs in items[:4]
        )
        failures.append(
            Failure(
                "unconfirmed",
                f"{len(items)} sends never confirmed nor refused ({len(in_db)} of "
                f"them stored): {shown}" + (" ..." if len(items) > 4 else ""),
                when,
                who=who,
                room=room,
                epoch=db.epochs.get(room, ""),
                seqs=tuple(r for _, seqs in in_db for r in seqs),
                cids=tuple(s.cid for s, _ in items),
            )
        )
    for room, rows in db.messages.items():
        seqs = sorted(rows)
        last = db.last_seqs[room]
        if seqs != list(range(1, last + 1)):
            missing = set(range(1, last + 1)) - set(seqs)
            failures.append(
                Failure(
                    "db-gaps",
                    f"conversation {room} has last_seq {last} but holds sequences "
                    f"{fmt_ranges(ranges(seqs))} (missing {fmt_ranges(ranges(missing))})",
                    when,
                    room=room,
                    epoch=db.epochs[room],
                    seqs=ranges(missing),
                )
            )
        phantom = [r.seq for r in rows.values() if r.cid not in mine]
        if phantom:
            failures.append(
                Failure(
                    "phantom",
                    f"conversation {room} holds messages no page sent: "
                    f"{fmt_ranges(ranges(phantom))}",
                    when,
                    room=room,
                    epoch=db.epochs[room],
                    seqs=ranges(phantom),
                )
            )
    return failures
