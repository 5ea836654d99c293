"""The checks: what each page shows against the database, every send against what was
stored, and every edit, delete, add and leave against what the database now says. Pure
functions of the pages' state, the sends, the changes and a read of the database.

A conversation's stream holds messages, changes of a message (edits and deletes, shown in
the message they change: the page's position moves past them) and changes of people
("alice added bob", shown as a line of their own).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from loadtest.checker.actions import Change
from loadtest.checker.history import Ranges, fmt_ranges, ranges
from loadtest.checker.page import Send, ViewEntry

MESSAGE_CHANGES = ("edit", "delete")
PEOPLE = ("added", "left", "removed")


@dataclass(frozen=True, slots=True)
class Stored:
    """An entry of a conversation's stream as stored: a message as it now reads (`body_hash`
    of "" once deleted; `original_hash`, the text it was sent with), or another entry
    (`kind` edit, delete, added, left, removed; `target`, the pk of the message changed)."""

    seq: int
    pk: int
    sender: str
    sender_id: int
    cid: str | None
    body_hash: int
    length: int
    kind: str = "message"
    target: int = 0
    edited: bool = False
    deleted: bool = False
    original_hash: int | None = None  # None: body_hash (never edited nor deleted)

    @property
    def sent_hash(self) -> int:
        return self.body_hash if self.original_hash is None else self.original_hash


@dataclass
class Db:
    """The database as the checker read it: per conversation its epoch, last_seq, messages
    by sequence, its other entries by sequence (changes of messages and of people), and the
    texts its deleted messages ever had (hash -> the message's sequence)."""

    epochs: dict[int, str]
    last_seqs: dict[int, int]
    messages: dict[int, dict[int, Stored]]
    others: dict[int, dict[int, Stored]] = field(default_factory=dict)
    deleted_texts: dict[int, dict[int, int]] = field(default_factory=dict)

    def entries(self, room: int) -> dict[int, Stored]:
        return {**self.messages.get(room, {}), **self.others.get(room, {})}

    def shown(self, room: int) -> dict[int, Stored]:
        """The entries a page shows as elements of their own: messages, changes of people."""
        people = {s: e for s, e in self.others.get(room, {}).items() if e.kind in PEOPLE}
        return {**self.messages.get(room, {}), **people}

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
    # Where its last load left it (Page.loaded_upto, .floor) and what its socket brought
    # since (Page.seen: messages, changes of people and changes of messages alike).
    loaded_upto: int = 0
    floor: int = 0
    seen: frozenset[int] = frozenset()


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
        shown = db.shown(p.room)
        entries = db.entries(p.room)
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
        # A hole: an entry the page's position went past without it. Up to its last load,
        # the page shows every message and change of people from its floor on (the changes of
        # messages are in the messages); after it, the socket brought each entry.
        holes = sorted(
            s
            for s in entries
            if (s > p.loaded_upto and s not in p.seen)
            or (s in shown and s >= p.floor and s not in seen)
        )
        extra = [s for s in seen if s not in shown]
        wrong = [s for s, v in seen.items() if s in shown and differs(v, shown[s])]
        deleted = db.deleted_texts.get(p.room, {})
        ghosts = [v.seq for v in p.view if not v.deleted and v.body_hash in deleted]
        if holes:
            fail(
                "holes",
                f"{len(holes)} of {last} stored entries never shown: {fmt_ranges(ranges(holes))}"
                + holes_kinds(holes, entries),
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
                v, e = seen[s], shown[s]
                details.append(f"seq {s}: page {describe(v)}; stored {describe(e)}")
            fail(
                "wrong",
                f"{len(wrong)} entries differ from the stored ones as they now read "
                f"({fmt_ranges(ranges(wrong))}): " + "; ".join(details),
                ranges(wrong),
            )
        if ghosts:
            fail(
                "deleted-shown",
                f"shows the text of a deleted message at {fmt_ranges(ranges(ghosts))} (deleted "
                f"{fmt_ranges(ranges(deleted[v.body_hash] for v in p.view if v.seq in ghosts))})",
                ranges(ghosts),
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


def differs(v: ViewEntry, e: Stored) -> bool:
    if e.kind == "message":
        return (
            v.kind != "message"
            or v.cid != e.cid
            or v.sender_id != e.sender_id
            or v.body_hash != e.body_hash
            or v.deleted != e.deleted
            or v.edited != (e.edited and not e.deleted)
        )
    return v.kind != e.kind or v.body_hash != e.body_hash


def describe(x: ViewEntry | Stored) -> str:
    if x.kind != "message":
        return f"{x.kind} line of {x.length} chars"
    state = "deleted" if x.deleted else f"{x.length} chars" + (" (edited)" if x.edited else "")
    return f"cid={x.cid} sender={x.sender_id} {state}"


def holes_kinds(holes: list[int], entries: dict[int, Stored]) -> str:
    kinds = defaultdict(int)
    for s in holes:
        if s in entries:
            kinds[entries[s].kind] += 1
    if set(kinds) <= {"message"}:
        return ""
    return " (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")"


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
        if s.confirmed is None and s.refused is None and not s.abandoned:
            unconfirmed[(s.who, s.room)].append((s, seqs))
        for _, row in rows:
            if row.sent_hash != s.body_hash:
                fail(
                    "body-changed",
                    f"{s.cid}: stored text as sent (before any edit) is not the "
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
        seqs = sorted(db.entries(room))
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


State = tuple  # ("text", hash) or ("deleted",)


def check_changes(
    changes: list[Change], sends: dict[str, Send], db: Db, restores: list[Restore], when: str
) -> list[Failure]:
    """Every edit and delete against the message as the database now has it. The changes of
    one message are made one at a time by its sender's page; each was confirmed (204),
    refused, or never answered (it may or may not have been done). The message must read as
    after its last confirmed change, or as after one made later that was never answered (an
    edit overwrites, a delete is final). An edit the database kept is marked edited. A
    change the server refused with no earlier change to explain it (a delete that may have
    been done) is a failure too. Messages changed before a restore are left out (the
    restored dump may hold any state of them)."""
    failures = []
    rows = {cid: row for cid, found in db.by_cid().items() for _, row in found[:1]}
    by_message: dict[str, list[Change]] = defaultdict(list)
    for c in changes:
        if c.kind in MESSAGE_CHANGES and c.cid:
            by_message[c.cid].append(c)
    for cid, group in by_message.items():
        group.sort(key=lambda c: c.t)
        if any(r.began > group[0].t for r in restores) or cid not in sends:
            continue
        first = group[0]

        def fail(kind: str, summary: str, c=first, row=None, cid=cid) -> None:
            seq = row.seq if row else c.seq
            failures.append(
                Failure(
                    kind,
                    summary,
                    when,
                    who=c.who,
                    room=c.room,
                    epoch=db.epochs.get(c.room, ""),
                    seqs=((seq, seq),),
                    cids=(cid,),
                )
            )

        story = "; ".join(
            f"{c.kind} {c.outcome} t={c.t:.1f}" + (f" ({c.statuses[-1]})" if c.statuses else "")
            for c in group
        )
        row = rows.get(cid)
        if row is None:
            if any(c.confirmed for c in group):
                fail("change-lost", f"msg-{first.pk} (seq {first.seq}) changed, then gone: {story}")
            continue
        valid = valid_states(sends[cid].body_hash, group)
        now: State = ("deleted",) if row.deleted else ("text", row.body_hash)
        if now not in valid:
            fail(
                "change-lost",
                f"msg-{row.pk} (seq {row.seq}) reads "
                + ("deleted" if row.deleted else f"{row.length} chars")
                + f", not as its changes leave it ({story})",
                row=row,
            )
        elif not row.deleted and row.body_hash != sends[cid].body_hash and not row.edited:
            fail("edit-unmarked", f"msg-{row.pk} (seq {row.seq}) edited, not marked: {story}")
        for i, c in enumerate(group):
            maybe_deleted = any(d.kind == "delete" and d.outcome != "refused" for d in group[:i])
            if c.outcome == "refused" and not maybe_deleted:
                fail(
                    "change-refused",
                    f"{c.describe()} refused ({', '.join(c.statuses[-2:])}): "
                    f"its sender's own recent message, not deleted ({story})",
                    c=c,
                    row=row,
                )
    return failures


def valid_states(sent_hash: int, group: list[Change]) -> set[State]:
    """What a message may read after these changes, in order: as after the last confirmed
    one, or as after any later one never answered (each of those may have been done or not;
    an edit after a delete that was done is refused)."""
    state: State = ("text", sent_hash)
    last = -1
    for i, c in enumerate(group):
        if c.confirmed:
            state, last = apply(state, c), i
    return {state} | {apply(state, c) for c in group[last + 1 :] if c.outcome == "unknown"}


def apply(state: State, c: Change) -> State:
    if state == ("deleted",) or c.kind == "delete":
        return ("deleted",)
    return ("text", c.body_hash)


def check_people(
    changes: list[Change], db: Db, restores: list[Restore], when: str
) -> list[Failure]:
    """Every add and leave since the last restore against the stream: a confirmed one is
    there ("alice added bob", "bob left"), and none is there more often than it was asked
    for (a retry of a lost reply adds nothing)."""
    last = restores[-1] if restores else None
    asked: dict[tuple[int, str], list[Change]] = defaultdict(list)
    for c in changes:
        if c.kind in ("add", "leave") and (last is None or c.t > last.stopped):
            line = f"{c.who} added {c.guest}" if c.kind == "add" else f"{c.guest} left"
            asked[(c.room, line)].append(c)
    failures = []
    for (room, line), group in asked.items():
        since = last.dump_last_seqs.get(room, 0) if last else 0
        kind = "added" if group[0].kind == "add" else "left"
        found = [
            e.seq
            for e in db.others.get(room, {}).values()
            if e.kind == kind and e.seq > since and e.body_hash == hash(line)
        ]
        confirmed = sum(1 for c in group if c.confirmed)
        maybe = sum(1 for c in group if c.outcome != "refused")
        if len(found) < confirmed or len(found) > maybe:
            failures.append(
                Failure(
                    "people",
                    f"{line!r}: asked {len(group)}x ({confirmed} confirmed, "
                    f"{maybe - confirmed} unanswered), in the stream {len(found)}x"
                    + (f" (seqs {fmt_ranges(ranges(found))})" if found else ""),
                    when,
                    who=group[0].who,
                    room=room,
                    epoch=db.epochs.get(room, ""),
                    seqs=ranges(found),
                )
            )
    return failures
