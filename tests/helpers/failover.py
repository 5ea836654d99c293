"""Pages in rooms that keep chatting while something fails under them (a Redis shard's
primary, say), then settle: the one procedure both the native stack's and the compose scale
profile's failover tests run (tests/stack/test_redis_failover.py,
tests/containers/test_compose_scale.py)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.helpers.wsclient import ChatSocket


class Page:
    """A member's open page: reconnects with ?after= when its socket ends, as chat.js does,
    and notes when its newest sequence last grew."""

    def __init__(self, sock: ChatSocket) -> None:
        self.sock = sock
        self.advanced: list[tuple[float, int]] = []

    def tick(self) -> None:
        if not self.sock.is_open:
            try:
                self.sock.reconnect(retry=True)
            except (AssertionError, OSError):
                return
        seq = self.sock.last_seq
        if not self.advanced or seq > self.advanced[-1][1]:
            self.advanced.append((time.monotonic(), seq))

    def longest_wait(self, start: float, end: float) -> float:
        """The longest time without a new message while messages were being sent."""
        times = [start] + [t for t, _ in self.advanced if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


@dataclass
class Report:
    promoted_after: float  # seconds from the fault to the recovery `fault` reported
    waits: dict[int, float]  # room -> longest wait for a live message after the fault
    sent: dict[int, list[str]] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"recovered {self.promoted_after:.1f} s after the fault; longest wait for a live "
            f"message per room: {sorted(round(w, 1) for w in self.waits.values())} s; "
            f"{sum(map(len, self.sent.values()))} messages"
        )


def converse_through(
    pages: dict[tuple[int, str], Page],
    rooms: dict[int, list[str]],
    fault: Callable[[], float],
    stored: Callable[[int], dict[str, int]],
    before: float = 3.0,
    after: float = 20.0,
    send_every: float = 0.5,
    settle: float = 60.0,
) -> Report:
    """Each room's first member sends every `send_every` s (under CHAT_RATE_LIMIT); after
    `before` s `fault()` runs (it breaks something and returns once it is repaired, with the
    seconds that took); sending goes on until `after` s past the fault. Then every send the
    server did not store is resent with its client id, as the page does, and every page must
    settle with every stored message once, 1..N with no hole. `stored(room)`: client id ->
    sequence, from the database."""
    sent: dict[int, list[str]] = {cid: [] for cid in rooms}
    # The pages are watched until the end; the senders stop `after` s past the fault.
    done, sending_over = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            for page in pages.values():
                page.tick()
            time.sleep(0.02)

    def send(cid: int, sender: Page) -> None:
        while not sending_over.is_set():
            client_id = str(uuid.uuid4())
            try:
                sender.sock.send(f"m{len(sent[cid])}", client_id=client_id)
                sent[cid].append(client_id)
            except (ConnectionError, OSError):
                pass  # the watcher reconnects it; an unsent message is not counted
            time.sleep(send_every)

    watcher = threading.Thread(target=watch, daemon=True)
    senders = [
        threading.Thread(target=send, args=(cid, pages[(cid, members[0])]), daemon=True)
        for cid, members in rooms.items()
    ]
    watcher.start()
    for thread in senders:
        thread.start()
    try:
        time.sleep(before)  # sending meanwhile: the fault comes mid-conversation
        faulted = time.monotonic()
        recovered = fault()
        time.sleep(max(0.0, after - (time.monotonic() - faulted)))
        sending_over.set()
        for thread in senders:
            thread.join(10)
        ended = time.monotonic()

        deadline = time.monotonic() + settle
        while True:
            ids = {cid: stored(cid) for cid in rooms}
            missing = {cid: [c for c in sent[cid] if c not in ids[cid]] for cid in rooms}
            if not any(missing.values()):
                break
            assert time.monotonic() < deadline, {c: len(m) for c, m in missing.items()}
            for cid, client_ids in missing.items():
                sender = pages[(cid, rooms[cid][0])]
                for client_id in client_ids[:2]:  # the page's pace, under the rate limit
                    with contextlib.suppress(ConnectionError, OSError):
                        sender.sock.send("resent", client_id=client_id)
            time.sleep(1.0)

        for (cid, _name), page in pages.items():
            total = len(ids[cid])
            assert sorted(ids[cid].values()) == list(range(1, total + 1)), cid
            page.sock.wait_for(
                lambda s, n=total: set(range(1, n + 1)) <= set(s.seen),
                timeout=settle,
                what=f"room {cid}: all {total} messages",
                fail_on_close=False,
            )
            assert set(page.sock.seen) == set(range(1, total + 1)), cid
            shown = {c: s for s, c in page.sock.seen.items() if c}
            assert shown == {c: s for c, s in ids[cid].items() if c in shown}, cid
        waits = {
            cid: max(pages[(cid, m)].longest_wait(faulted, ended) for m in members)
            for cid, members in rooms.items()
        }
        return Report(recovered, waits, sent)
    finally:
        sending_over.set()
        done.set()
