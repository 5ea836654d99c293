"""A crowd for `bench.py`: many sockets under the default per-socket limits that all send
at once (a room's burst after an announcement), each page retrying what the server refuses
past capacity as chat.js does: after the refusal's retry hint, doubling per refusal, with
jitter, and holding its next sends until the window it was told has passed.

    python -m loadtest.crowd --url ws://127.0.0.1:28080 --origin http://127.0.0.1:28080 \
        --sessions sessions.json --messages 3

`sessions.json` is [{"cookie", "conversation"}, ...]: one socket each, through --url.
Protocol on stdout/stdin (one JSON line each way, like loadtest.bigroom):

1. opens every socket, prints {"open": N, "failed": F}; waits for a line;
2. every socket sends --messages messages within --spread seconds, retrying refusals; once
   every member has every message of its room (or after --deadline), prints {"crowd": {...}}:
   sends, refusals and retries, how long until all were confirmed and all delivered,
   deliveries per second, duplicates, and the client ids (the bench counts them in the
   database: each stored once).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import websocket  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from loadtest.bigroom import pct, wait_line  # noqa: E402
from loadtest.idle import raise_fd_limit  # noqa: E402

ARTICLE_RE = re.compile(
    r'<article id="msg-\d+" class="msg" data-seq="(\d+)"[^>]*?(?: data-client-id="([^"]*)")?>'
)
REFUSAL_RE = re.compile(r'data-client-id="([^"]+)" data-retry-after="([0-9.]+)"')
RETRY_CAP_S = 30.0  # chat.js's RETRY_CAP_MS


class Page:
    """One member's socket: sends, retries refusals like chat.js, records what arrives."""

    def __init__(self, crowd: Crowd, session: dict) -> None:
        self.crowd, self.session = crowd, session
        self.room = int(session["conversation"])
        self.ws: websocket.WebSocket | None = None
        self.got: Counter[str] = Counter()  # client id -> times received
        self.pending: dict[str, tuple[str, int]] = {}  # client id -> (text, refusals)
        self.confirmed: dict[str, float] = {}  # own client id -> monotonic time confirmed
        self.busy_until = 0.0
        self.refusals = 0
        self.closed_with: int | None = None

    def connect(self) -> bool:
        try:
            self.ws = websocket.create_connection(
                f"{self.crowd.url}/ws/chat/{self.room}",
                cookie=self.session["cookie"],
                origin=self.crowd.origin,
                timeout=30,
                skip_utf8_validation=True,
            )
        except (websocket.WebSocketException, OSError):
            return False
        self.ws.settimeout(None)
        gevent.spawn(self.read)
        return True

    def read(self) -> None:
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except (websocket.WebSocketException, OSError):
                self.closed_with = 1006
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.closed_with = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                return
            text = data.decode("utf-8", "replace")
            now = time.monotonic()
            for _seq, cid in ARTICLE_RE.findall(text):
                if cid:
                    self.got[cid] += 1
                    if cid in self.pending:
                        del self.pending[cid]
                        self.confirmed[cid] = now
            for cid, retry in REFUSAL_RE.findall(text):
                if cid in self.pending:
                    self.refused(cid, float(retry))

    def refused(self, cid: str, retry: float) -> None:
        """chat.js's retryLater: the hint doubled per refusal (capped), half to all of it."""
        self.refusals += 1
        self.crowd.refusals += 1
        text, attempts = self.pending[cid]
        attempts += 1
        self.pending[cid] = (text, attempts)
        self.busy_until = max(self.busy_until, time.monotonic() + retry)
        base = min(RETRY_CAP_S, retry * 2 ** (attempts - 1))
        gevent.spawn_later(base / 2 + random.random() * base / 2, self.send_again, cid)

    def send_again(self, cid: str) -> None:
        if cid in self.pending:
            self.crowd.retries += 1
            self._send(cid, self.pending[cid][0])

    def send(self, text: str) -> str:
        cid = str(uuid.uuid4())
        self.pending[cid] = (text, 0)
        self.crowd.sent.append((self.room, cid))
        wait = self.busy_until - time.monotonic()
        if wait > 0:  # chat.js holds new sends while the server said it is busy
            gevent.spawn_later(wait + random.random() * 0.5, self._send, cid, text)
        else:
            self._send(cid, text)
        return cid

    def _send(self, cid: str, text: str) -> None:
        # A socket that is gone says so in closed_with.
        with contextlib.suppress(websocket.WebSocketException, OSError):
            self.ws.send(json.dumps({"chat_message": text, "client_id": cid}))


class Crowd:
    def __init__(self, args: argparse.Namespace, sessions: list[dict]) -> None:
        self.url, self.origin = args.url, args.origin
        self.pages = [Page(self, s) for s in sessions]
        self.sent: list[tuple[int, str]] = []  # (room, client id)
        self.refusals = self.retries = 0

    def open_all(self) -> int:
        return Pool(100).map(lambda p: p.connect(), self.pages).count(False)

    def run(self, messages: int, spread: float, deadline_s: float) -> dict:
        started = time.monotonic()

        def burst(page: Page) -> None:
            for n in range(messages):
                gevent.sleep(random.uniform(0, spread / messages))
                page.send(f"crowd {n} from {page.session['conversation']}")

        gevent.joinall([gevent.spawn(burst, p) for p in self.pages])
        members: dict[int, list[Page]] = {}
        for page in self.pages:
            members.setdefault(page.room, []).append(page)
        expected = {room: {cid for r, cid in self.sent if r == room} for room in members}

        def delivered() -> bool:
            return all(
                expected[page.room] <= page.got.keys()
                for page in self.pages
                if page.closed_with is None
            )

        confirmed_at = delivered_at = None
        while time.monotonic() - started < deadline_s:
            if confirmed_at is None and not any(p.pending for p in self.pages):
                confirmed_at = time.monotonic() - started
            if delivered():
                delivered_at = time.monotonic() - started
                break
            gevent.sleep(0.05)
        deliveries = sum(sum(p.got.values()) for p in self.pages)
        confirm_s = [t - started for p in self.pages for t in p.confirmed.values()]
        return {
            "sockets": len(self.pages),
            "rooms": len(members),
            "sent": len(self.sent),
            "refusals": self.refusals,
            "retries": self.retries,
            "unconfirmed": sum(len(p.pending) for p in self.pages),
            "closed": sum(p.closed_with is not None for p in self.pages),
            "all_confirmed_s": None if confirmed_at is None else round(confirmed_at, 1),
            "confirm_p50_s": _round(pct(confirm_s, 50)),
            "confirm_p99_s": _round(pct(confirm_s, 99)),
            "all_delivered_s": None if delivered_at is None else round(delivered_at, 1),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / delivered_at) if delivered_at else None,
            "duplicates": sum(n - 1 for p in self.pages for n in p.got.values() if n > 1),
            "missing": sum(len(expected[p.room] - p.got.keys()) for p in self.pages),
            "client_ids": [cid for _, cid in self.sent],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="where pages connect (nginx)")
    parser.add_argument("--origin", required=True)
    parser.add_argument("--sessions", required=True)
    parser.add_argument("--messages", type=int, default=3, help="each socket sends this many")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds the burst takes")
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()
    sessions = json.loads(Path(args.sessions).read_text())
    raise_fd_limit(len(sessions) + 200)
    crowd = Crowd(args, sessions)
    failed = crowd.open_all()
    print(json.dumps({"open": len(crowd.pages) - failed, "failed": failed}), flush=True)
    if wait_line():
        print(
            json.dumps({"crowd": crowd.run(args.messages, args.spread, args.deadline)}), flush=True
        )
        wait_line()
    for page in crowd.pages:
        if page.ws is not None:
            page.ws.abort()
    return 0


if __name__ == "__main__":
    sys.exit(main())
