"""Every send and every delivery of a run, and the completeness check made from them.

Each Locust process (local, or every worker) keeps one Ledger. In a distributed run the
workers ship theirs to the master, which merges them and checks the whole run: a recipient
expects every message sent into its room, whichever worker sent it.

A recipient is a user whose websocket connected. A user that never connected (its login or
handshake still failed after the retries) is not one: it is listed by name with the reason,
and the run fails only when too few users connected for the figures to mean anything.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Ledger:
    # message id -> (room, sender username, send time ns)
    sent: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    # message id -> (room, sender username, server's error text)
    rejected: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    # message id -> (room, sender username): refused past capacity, never stored
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    # recipient username -> room (users whose websocket connected)
    recipients: dict[str, int] = field(default_factory=dict)
    # username -> why it never connected (login or handshake refused, retries exhausted)
    not_connected: dict[str, str] = field(default_factory=dict)
    # recipient username -> [(message id or None, seq, receive time ns)] in arrival order
    deliveries: dict[str, list[tuple[str | None, int, int]]] = field(default_factory=dict)
    # usernames that started sending before their whole room was online
    barrier_timeouts: list[str] = field(default_factory=list)
    # usernames whose socket closed for good during the run (reconnects exhausted)
    closed: list[str] = field(default_factory=list)
    # error frames from the server that answered no message of ours
    server_errors: list[str] = field(default_factory=list)
    reconnects: int = 0

    def add_recipient(self, username: str, room: int) -> None:
        self.recipients[username] = room
        self.deliveries.setdefault(username, [])

    def record_not_connected(self, username: str, reason: str) -> None:
        self.not_connected[username] = reason

    def record_sent(self, message_id: str, room: int, sender: str, sent_ns: int) -> None:
        self.sent[message_id] = (room, sender, sent_ns)

    def record_rejected(self, message_id: str, text: str) -> None:
        room, sender, _ = self.sent.pop(message_id)
        self.rejected[message_id] = (room, sender, text)

    def record_refused(self, message_id: str) -> None:
        room, sender, _ = self.sent.pop(message_id)
        self.refused[message_id] = (room, sender)

    def record_delivery(
        self, recipient: str, message_id: str | None, seq: int, recv_ns: int
    ) -> None:
        self.deliveries[recipient].append((message_id, seq, recv_ns))

    def locally_complete(self) -> bool:
        """True when every recipient here has every message sent from here into its room.
        (Messages from other workers are beyond this process's knowledge.)"""
        by_room: dict[int, set[str]] = {}
        for message_id, (room, _, _) in self.sent.items():
            by_room.setdefault(room, set()).add(message_id)
        for recipient, room in self.recipients.items():
            want = by_room.get(room)
            if want and not want <= {d[0] for d in self.deliveries[recipient]}:
                return False
        return True

    def delivery_count(self) -> int:
        return sum(len(d) for d in self.deliveries.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, data: dict[str, Any]) -> None:
        self.sent.update({k: tuple(v) for k, v in data["sent"].items()})
        self.rejected.update({k: tuple(v) for k, v in data["rejected"].items()})
        self.refused.update({k: tuple(v) for k, v in data.get("refused", {}).items()})
        self.recipients.update(data["recipients"])
        self.not_connected.update(data.get("not_connected", {}))
        for recipient, rows in data["deliveries"].items():
            self.deliveries.setdefault(recipient, []).extend(tuple(r) for r in rows)
        self.barrier_timeouts.extend(data["barrier_timeouts"])
        self.closed.extend(data.get("closed", []))
        self.server_errors.extend(data.get("server_errors", []))
        self.reconnects += data["reconnects"]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of values (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RecipientResult:
    recipient: str
    room: int
    expected: int
    received: int  # distinct expected messages that arrived
    lost: int
    duplicates: int
    reordered: int
    unexpected: int  # load-test ids this run never sent (e.g. a previous run's stragglers)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.reordered)


@dataclass
class Report:
    rows: list[RecipientResult]
    sent: int
    rejected: int
    fanout_ms: list[float]
    send_window_s: float
    delivery_window_s: float
    barrier_timeouts: list[str]
    reconnects: int
    p99_threshold_ms: float
    users: int = 0  # the users meant to take part (0: the recipients)
    # username -> why it never connected; not in `rows`, not in the completeness figures
    not_connected: dict[str, str] = field(default_factory=dict)
    min_connected: float = 0.0  # fraction of `users` that must connect
    closed: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    refused: int = 0  # refused past capacity: not stored, the sender told at once
    # (seconds since the first send, fan-out ms): shows whether a tail is spread or a burst.
    fanout_timeline: list[tuple[float, float]] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.rows)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fanout(self, q: float) -> float | None:
        return percentile(self.fanout_ms, q)

    def summary(self) -> dict[str, Any]:
        """The machine-readable result (written as JSON for CI and the benchmark)."""
        delivered = self.total("received") + self.total("duplicates")
        return {
            "ok": self.ok,
            "failures": self.failures,
            "rooms": len({r.room for r in self.rows}),
            "users": self.users or len(self.rows),
            "recipients": len(self.rows),
            "not_connected": dict(sorted(self.not_connected.items())),
            "min_connected": self.min_connected,
            "sent": self.sent,
            "rejected": self.rejected,
            "refused": self.refused,
            "expected": self.total("expected"),
            "received": self.total("received"),
            "lost": self.total("lost"),
            "duplicates": self.total("duplicates"),
            "reordered": self.total("reordered"),
            "unexpected": self.total("unexpected"),
            "offered_msgs_per_s": self.sent / self.send_window_s if self.send_window_s else 0.0,
            "deliveries_per_s": delivered / self.delivery_window_s
            if self.delivery_window_s
            else 0.0,
            "fanout_p50_ms": self.fanout(50),
            "fanout_p95_ms": self.fanout(95),
            "fanout_p99_ms": self.fanout(99),
            "fanout_max_ms": self.fanout(100),
            "p99_threshold_ms": self.p99_threshold_ms,
            "reconnects": self.reconnects,
            "barrier_timeouts": len(self.barrier_timeouts),
            "closed": len(self.closed),
            "server_errors": len(self.server_errors),
            "fanout_p99_ms_by_second": self.p99_by_second(),
        }

    def p99_by_second(self) -> list[float | None]:
        """Fan-out p99 of the messages sent in each second of the run, in order."""
        buckets: dict[int, list[float]] = {}
        for at, latency in self.fanout_timeline:
            buckets.setdefault(int(at), []).append(latency)
        last = max(buckets, default=-1)
        return [
            None if (p := percentile(buckets.get(i, []), 99)) is None else round(p, 1)
            for i in range(last + 1)
        ]

    def table(self) -> str:
        """A per-room table, the recipients with problems, and the totals."""
        lines = [
            f"{'room':>8} {'recipients':>10} {'expected':>9} {'received':>9} {'lost':>6} "
            f"{'dup':>5} {'reorder':>7} {'unexp':>6}"
        ]
        by_room: dict[int, list[RecipientResult]] = {}
        for row in self.rows:
            by_room.setdefault(row.room, []).append(row)
        for room in sorted(by_room):
            rs = by_room[room]
            lines.append(
                f"{room:>8} {len(rs):>10} {sum(r.expected for r in rs):>9} "
                f"{sum(r.received for r in rs):>9} {sum(r.lost for r in rs):>6} "
                f"{sum(r.duplicates for r in rs):>5} {sum(r.reordered for r in rs):>7} "
                f"{sum(r.unexpected for r in rs):>6}"
            )
        bad = [r for r in self.rows if not r.ok]
        for r in bad[:20]:
            lines.append(
                f"  ! {r.recipient} (room {r.room}): expected {r.expected}, "
                f"received {r.received}, lost {r.lost}, dup {r.duplicates}, "
                f"reordered {r.reordered}"
            )
        if len(bad) > 20:
            lines.append(f"  ! ... and {len(bad) - 20} more recipients with problems")
        s = self.summary()
        if self.not_connected:
            lines.append(
                f"not connected: {len(self.not_connected)} of {s['users']} users "
                "(not in the figures above or below):"
            )
            lines += [f"  - {name}: {why}" for name, why in sorted(self.not_connected.items())]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        lines += [
            f"sent {s['sent']} (rejected {s['rejected']}, refused busy {s['refused']}) "
            f"at {s['offered_msgs_per_s']:.1f} msg/s; "
            f"deliveries expected {s['expected']}, received {s['received']}, lost {s['lost']}, "
            f"duplicates {s['duplicates']}, reordered {s['reordered']}; "
            f"{s['deliveries_per_s']:.1f} deliveries/s; reconnects {s['reconnects']}; "
            f"users connected {s['recipients']} of {s['users']}",
            f"fan-out ms: p50 {ms(s['fanout_p50_ms'])}  p95 {ms(s['fanout_p95_ms'])}  "
            f"p99 {ms(s['fanout_p99_ms'])}  max {ms(s['fanout_max_ms'])}  "
            f"(threshold p99 <= {self.p99_threshold_ms:g})",
            "RESULT: " + ("PASS" if self.ok else "FAIL: " + "; ".join(self.failures)),
        ]
        return "\n".join(lines)


def check(
    ledger: Ledger,
    p99_threshold_ms: float,
    users: list[str] | None = None,
    min_connected: float = 0.0,
) -> Report:
    """Expected vs received per recipient, duplicates, reordering, and fan-out latency.

    `users`: everyone meant to take part. Those that are not recipients are reported as not
    connected (with the ledger's reason, if it has one) and left out of the figures; fewer
    than `min_connected` of them connected fails the run."""
    expected_by_room: dict[int, set[str]] = {}
    for message_id, (room, _, _) in ledger.sent.items():
        expected_by_room.setdefault(room, set()).add(message_id)
    known = set(ledger.sent) | set(ledger.rejected) | set(ledger.refused)
    rows: list[RecipientResult] = []
    fanout: list[float] = []
    timeline: list[tuple[float, float]] = []
    first_sent = min((t for _, _, t in ledger.sent.values()), default=0)
    first_recv = math.inf
    last_recv = 0
    for recipient, room in sorted(ledger.recipients.items()):
        expected = expected_by_room.get(room, set())
        seen_ids: Counter[str] = Counter()
        seen_seqs: Counter[int] = Counter()
        duplicates = reordered = 0
        high = 0
        for message_id, seq, recv_ns in ledger.deliveries.get(recipient, []):
            if seen_seqs[seq] or (message_id and seen_ids[message_id]):
                duplicates += 1
            elif seq < high:
                reordered += 1
            seen_seqs[seq] += 1
            high = max(high, seq)
            if message_id is None:
                continue
            seen_ids[message_id] += 1
            if message_id in expected and seen_ids[message_id] == 1:
                first_recv = min(first_recv, recv_ns)
                last_recv = max(last_recv, recv_ns)
                _, sender, sent_ns = ledger.sent[message_id]
                if sender != recipient:  # the sender's own echo is its "send" ack, not fan-out
                    fanout.append((recv_ns - sent_ns) / 1e6)
                    timeline.append(((sent_ns - first_sent) / 1e9, fanout[-1]))
        received = sum(1 for m in expected if seen_ids[m])
        rows.append(
            RecipientResult(
                recipient=recipient,
                room=room,
                expected=len(expected),
                received=received,
                lost=len(expected) - received,
                duplicates=duplicates,
                reordered=reordered,
                unexpected=sum(1 for m in seen_ids if m not in known),
            )
        )
    sent_times = [t for _, _, t in ledger.sent.values()]
    # n sends span n - 1 intervals: the window is stretched by one mean interval.
    send_window = (
        (max(sent_times) - min(sent_times)) / 1e9 * len(sent_times) / (len(sent_times) - 1)
        if len(sent_times) > 1
        else 0.0
    )
    delivery_window = (last_recv - min(sent_times)) / 1e9 if sent_times and last_recv else 0.0
    everyone = set(users or []) | set(ledger.recipients) | set(ledger.not_connected)
    report = Report(
        rows=rows,
        sent=len(ledger.sent),
        rejected=len(ledger.rejected),
        refused=len(ledger.refused),
        fanout_ms=fanout,
        fanout_timeline=timeline,
        send_window_s=send_window,
        delivery_window_s=delivery_window,
        barrier_timeouts=ledger.barrier_timeouts,
        reconnects=ledger.reconnects,
        p99_threshold_ms=p99_threshold_ms,
        users=len(everyone),
        not_connected={
            name: ledger.not_connected.get(name, "did not connect before the run ended")
            for name in sorted(everyone - set(ledger.recipients))
        },
        min_connected=min_connected,
        closed=ledger.closed,
        server_errors=ledger.server_errors,
    )
    report.failures = _failures(report)
    return report


def _failures(report: Report) -> list[str]:
    failures = []
    if not report.rows:
        failures.append("no recipient connected")
    need = math.ceil(report.min_connected * report.users - 1e-9)
    if report.rows and len(report.rows) < need:
        failures.append(
            f"only {len(report.rows)} of {report.users} users connected "
            f"(--min-connected {report.min_connected:g} needs {need})"
        )
    if report.sent == 0:
        failures.append(
            "no message was sent (sending starts once every user is online or has given up: "
            "was --run-time long enough for the logins?)"
            if report.rows
            else "no message was sent"
        )
    for attr, label in (
        ("lost", "lost"),
        ("duplicates", "duplicated"),
        ("reordered", "out of order"),
    ):
        if n := report.total(attr):
            failures.append(f"{n} deliveries {label}")
    if report.rejected:
        failures.append(f"{report.rejected} messages rejected by the server")
    if report.closed:
        failures.append(f"{len(report.closed)} sockets closed for good during the run")
    if report.server_errors:
        failures.append(f"{len(report.server_errors)} error frames from the server")
    if report.barrier_timeouts:
        failures.append(f"{len(report.barrier_timeouts)} users sent before their room was online")
    p99 = report.fanout(99)
    if p99 is not None and p99 > report.p99_threshold_ms:
        failures.append(f"p99 fan-out {p99:.1f} ms above {report.p99_threshold_ms:g} ms")
    return failures
