"""One big room for `bench.py`: N sockets in one conversation, broadcast latency to all of
them, then (optionally) a reconnect storm when their daphne is killed.

    python -m loadtest.bigroom --url ws://127.0.0.1:28001 --origin http://127.0.0.1:28080 \
        --sessions sessions.json [--messages 20] [--interval 0.5] \
        [--reconnect-url ws://127.0.0.1:28080]

`sessions.json` is [{"cookie": "sessionid=...", "conversation": N}, ...], every one in the
same conversation; the first one sends, all the others listen. Protocol on stdout/stdin
(one JSON line each way, like loadtest.idle):

1. opens every listener, prints {"open": N, "failed": F}; waits for a line (the bench reads
   the daphne's memory meanwhile);
2. sends --messages messages, --interval apart, through its own socket, waits up to 10 s for
   every listener to have every one, prints {"broadcast": {...}}; waits for a line;
3. with --reconnect-url: every listener whose socket closes reconnects there with
   ?after=<last sequence it got> and jittered doubling backoff (as chat.js does). After the
   bench killed their daphne and sent a line, it waits until every listener is back, sends
   one message and prints {"storm": {...}} once all have it (or after 60 s).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import websocket  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from loadtest.idle import raise_fd_limit  # noqa: E402

SEQ_RE = re.compile(r'data-seq="(\d+)"')
BODY_RE = re.compile(r"bigroom:(\d+):(\d+)")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def echoed_numbers(
    ws: websocket.WebSocket, on_frame: Callable[[str], None] | None = None
) -> Iterator[int]:
    """The numbers of the bench's messages in what a socket receives, until it closes
    (`on_frame` sees every frame first)."""
    while True:
        try:
            opcode, data = ws.recv_data()
        except (websocket.WebSocketException, OSError):
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return
        text = data.decode("utf-8", "replace")
        if on_frame is not None:
            on_frame(text)
        for number, _ in BODY_RE.findall(text):
            yield int(number)


class Listener:
    def __init__(self, room: BigRoom, session: dict) -> None:
        self.room, self.session = room, session
        self.ws: websocket.WebSocket | None = None
        self.last_seq = 0
        self.got: dict[int, int] = {}  # message number -> receive time ns
        self.reconnects = 0
        self.open = False

    def connect(self, url: str, after: bool) -> bool:
        query = f"?after={self.last_seq}" if after else ""
        try:
            ws = websocket.create_connection(
                f"{url}/ws/chat/{self.session['conversation']}{query}",
                cookie=self.session["cookie"],
                origin=self.room.origin,
                timeout=30,
                skip_utf8_validation=True,
            )
        except (websocket.WebSocketException, OSError):
            return False
        ws.settimeout(None)
        self.ws, self.open = ws, True
        gevent.spawn(self.read, ws)
        return True

    def read(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                opcode, data = ws.recv_data()
            except (websocket.WebSocketException, OSError):
                opcode, data = websocket.ABNF.OPCODE_CLOSE, b""
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.open = False
                if self.room.reconnect_url and not self.room.stopping:
                    gevent.spawn(self.reconnect)
                return
            now = time.time_ns()
            text = data.decode("utf-8", "replace")
            for seq in SEQ_RE.findall(text):
                self.last_seq = max(self.last_seq, int(seq))
            for number, _ in BODY_RE.findall(text):
                self.got.setdefault(int(number), now)

    def reconnect(self) -> None:
        delay = 0.5
        while not self.room.stopping:
            gevent.sleep(random.uniform(0, delay))  # full jitter, as chat.js
            if self.connect(self.room.reconnect_url, after=True):
                self.reconnects += 1
                return
            delay = min(delay * 2, 8.0)


def stop(room: Any) -> None:
    """Aborts every listener's socket, with no reconnects from here on (`room`: anything with
    `stopping` and `listeners`, a BigRoom or loadtest.storm's Storm)."""
    room.stopping = True
    for lis in room.listeners:
        if lis.ws is not None:
            lis.ws.abort()


class BigRoom:
    def __init__(self, url: str, origin: str, sessions: list[dict], reconnect_url: str) -> None:
        self.url, self.origin, self.reconnect_url = url, origin, reconnect_url
        self.sender_session, *rest = sessions
        self.listeners = [Listener(self, s) for s in rest]
        self.stopping = False
        self.sent: dict[int, int] = {}  # message number -> send time ns
        self.sender: websocket.WebSocket | None = None
        self.confirm: dict[int, gevent.event.Event] = {}

    def open_all(self) -> int:
        pool = Pool(50)
        results = pool.map(lambda lis: lis.connect(self.url, after=False), self.listeners)
        return results.count(False)

    def send(self, number: int) -> None:
        """Sends message `number` and waits for its confirmation (its echo); resends it with
        the same client_id on a fresh socket if none comes (stored once either way)."""
        url = self.reconnect_url or self.url
        client_id = str(uuid.uuid4())
        confirmed = gevent.event.Event()
        self.confirm[number] = confirmed
        for _ in range(10):
            try:
                if self.sender is None:
                    self.sender = websocket.create_connection(
                        f"{url}/ws/chat/{self.sender_session['conversation']}",
                        cookie=self.sender_session["cookie"],
                        origin=self.origin,
                        timeout=30,
                    )
                    gevent.spawn(self._read_sender, self.sender)
                now = time.time_ns()
                self.sent.setdefault(number, now)
                body = f"bigroom:{number}:{self.sent[number]}"
                self.sender.send(json.dumps({"chat_message": body, "client_id": client_id}))
            except (websocket.WebSocketException, OSError):
                self.sender = None
                gevent.sleep(0.5)
                continue
            if confirmed.wait(timeout=5.0):
                return
            self.sender = None  # no echo: a dead socket; resend on a new one

    def _read_sender(self, ws: websocket.WebSocket) -> None:
        for number in echoed_numbers(ws):
            event = self.confirm.get(number)
            if event is not None:
                event.set()

    def wait_all(self, numbers: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n in lis.got for lis in self.listeners for n in numbers):
                return
            gevent.sleep(0.05)

    def broadcast_report(self, numbers: list[int]) -> dict:
        to_all, each = [], []
        missing = 0
        for n in numbers:
            arrivals = [lis.got.get(n) for lis in self.listeners]
            missing += arrivals.count(None)
            got = [(t - self.sent[n]) / 1e6 for t in arrivals if t is not None]
            each += got
            if len(got) == len(arrivals):
                to_all.append(max(got))
        return {
            "listeners": len(self.listeners),
            "messages": len(numbers),
            "to_all_p50_ms": pct(to_all, 50),
            "to_all_p99_ms": pct(to_all, 99),
            "each_p50_ms": pct(each, 50),
            "each_p99_ms": pct(each, 99),
            "missing": missing,
        }


def wait_line() -> bool:
    # In gevent's thread pool: a plain blocking read would freeze every greenlet.
    return bool(gevent.get_hub().threadpool.apply(sys.stdin.readline))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--sessions", required=True)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--reconnect-url", default="")
    args = parser.parse_args()
    sessions = json.loads(Path(args.sessions).read_text())
    raise_fd_limit(len(sessions) + 200)
    room = BigRoom(args.url, args.origin, sessions, args.reconnect_url)
    failed = room.open_all()
    print(json.dumps({"open": sum(lis.open for lis in room.listeners), "failed": failed}))
    sys.stdout.flush()
    if not wait_line():
        return 0
    numbers = list(range(args.messages))
    for n in numbers:
        room.send(n)
        gevent.sleep(args.interval)
    room.wait_all(numbers, 10.0)
    print(json.dumps({"broadcast": room.broadcast_report(numbers)}), flush=True)
    if args.reconnect_url and wait_line():
        killed_at = time.monotonic()
        deadline = killed_at + 60
        # Back: reconnected since the kill (their socket died with the daphne) and open.
        while time.monotonic() < deadline and not all(
            lis.open and lis.reconnects for lis in room.listeners
        ):
            gevent.sleep(0.1)
        back = time.monotonic() - killed_at
        n = len(numbers)
        room.send(n)
        room.wait_all([n], max(1.0, deadline - time.monotonic()))
        caught_up = time.monotonic() - killed_at
        print(
            json.dumps(
                {
                    "storm": {
                        "listeners": len(room.listeners),
                        "back": sum(bool(lis.open and lis.reconnects) for lis in room.listeners),
                        "all_back_s": round(back, 1),
                        "caught_up": sum(n in lis.got for lis in room.listeners),
                        "caught_up_s": round(caught_up, 1),
                        "reconnects": sum(lis.reconnects for lis in room.listeners),
                    }
                }
            ),
            flush=True,
        )
        wait_line()
    stop(room)
    return 0


if __name__ == "__main__":
    sys.exit(main())
