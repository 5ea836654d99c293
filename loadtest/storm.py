"""Reconnect storm for `bench.py`: many sockets in many rooms on ONE daphne, which the bench
kills; how long until every socket is back (through nginx, on the daphne left) and has the
message its room was sent while it was gone.

    python -m loadtest.storm --url ws://127.0.0.1:28001 --sender-url ws://127.0.0.1:28002 \
        --reconnect-url ws://127.0.0.1:28080 --origin http://127.0.0.1:28080 \
        --sessions sessions.json

`sessions.json` is {"listeners": [{"cookie", "conversation"}, ...], "senders": [...]}: one
socket per listener, opened on --url (the daphne to be killed); one sender per conversation,
opened on --sender-url (the daphne that stays). Protocol on stdout/stdin (one JSON line each
way, like loadtest.bigroom):

1. opens every socket, prints {"open": N, "failed": F, "senders": S}; waits for a line;
2. after the bench killed the listeners' daphne and sent a line: every sender sends one
   message into its room at once (while its listeners are down: they get it by replay, with
   ?after=, or live once back). Every listener whose socket closed reconnects to
   --reconnect-url with jittered doubling backoff, as chat.js does. Prints {"storm": {...}}
   once every listener is back and has its room's message, or after --deadline seconds.
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
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import websocket  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from loadtest.bigroom import Listener, echoed_numbers, pct, stop, wait_line  # noqa: E402
from loadtest.idle import raise_fd_limit  # noqa: E402

STORM_MESSAGE = 0  # the number every room's storm message carries (bigroom's body format)
RETRY_AFTER_RE = re.compile(r'data-retry-after="([0-9.]+)"')


class StormListener(Listener):
    def __init__(self, room: Storm, session: dict) -> None:
        super().__init__(room, session)
        self.attempts = 0  # handshakes tried since the kill
        self.back_at: float | None = None  # monotonic time it was back

    def connect(self, url: str, after: bool) -> bool:
        if after:
            self.attempts += 1
        ok = super().connect(url, after)
        if ok and after:
            self.back_at = time.monotonic()
        return ok


class Sender:
    """One socket per room on the daphne that stays: sends the storm message, waits for its
    echo (resending with the same client_id on a fresh socket if none comes)."""

    def __init__(self, storm: Storm, session: dict) -> None:
        self.storm, self.session = storm, session
        self.ws: websocket.WebSocket | None = None
        self.confirmed = gevent.event.Event()
        self.retry = gevent.event.Event()
        self.retry_in = 1.0
        self.client_id = ""
        self.sent_at: int | None = None

    def connect(self, url: str) -> bool:
        try:
            self.ws = websocket.create_connection(
                f"{url}/ws/chat/{self.session['conversation']}",
                cookie=self.session["cookie"],
                origin=self.storm.origin,
                timeout=30,
            )
        except (websocket.WebSocketException, OSError):
            self.ws = None
            return False
        self.ws.settimeout(None)
        gevent.spawn(self._read, self.ws)
        return True

    def _read(self, ws: websocket.WebSocket) -> None:
        for number in echoed_numbers(ws, self.refused):
            if number == STORM_MESSAGE:
                self.confirmed.set()

    def refused(self, frame: str) -> None:
        """An error fragment for this send ("busy, retrying"): resend after its
        data-retry-after, jittered, as chat.js does."""
        if self.client_id and f'data-client-id="{self.client_id}"' in frame:
            match = RETRY_AFTER_RE.search(frame)
            self.retry_in = float(match.group(1)) if match else 1.0
            self.retry.set()

    def send(self) -> None:
        self.client_id = client_id = str(uuid.uuid4())
        self.sent_at = time.time_ns()
        body = f"bigroom:{STORM_MESSAGE}:{self.sent_at}"
        backoff = 1.0
        for _ in range(20):
            try:
                if self.ws is None and not self.connect(self.storm.reconnect_url):
                    raise OSError("no socket")
                self.retry.clear()
                self.ws.send(json.dumps({"chat_message": body, "client_id": client_id}))
            except (websocket.WebSocketException, OSError):
                self.ws = None
                gevent.sleep(0.5)
                continue
            gevent.wait([self.confirmed, self.retry], timeout=5.0, count=1)
            if self.confirmed.is_set():
                return
            if self.retry.is_set():  # refused past capacity: not stored, try again later
                gevent.sleep(random.uniform(0.5, 1.0) * max(self.retry_in, backoff))
                backoff = min(backoff * 2, 8.0)
                continue
            self.ws = None  # no answer: a dead socket; resend on a new one


class Storm:
    """Listeners in many rooms, and a sender per room on the daphne that stays."""

    def __init__(self, args: argparse.Namespace, sessions: dict) -> None:
        self.url, self.origin = args.url, args.origin
        self.sender_url, self.reconnect_url = args.sender_url, args.reconnect_url
        self.stopping = False
        self.listeners = [StormListener(self, s) for s in sessions["listeners"]]
        self.senders = [Sender(self, s) for s in sessions["senders"]]

    def open_all(self) -> int:
        pool = Pool(100)
        listeners = pool.map(lambda lis: lis.connect(self.url, after=False), self.listeners)
        senders = pool.map(lambda s: s.connect(self.sender_url), self.senders)
        return listeners.count(False) + senders.count(False)

    def run(self, deadline_s: float) -> dict:
        killed_at = time.monotonic()
        deadline = killed_at + deadline_s
        for sender in self.senders:
            gevent.spawn(sender.send)

        def back(lis: StormListener) -> bool:
            return lis.open and lis.back_at is not None

        all_back = caught_up = None
        while time.monotonic() < deadline:
            if all_back is None and all(back(lis) for lis in self.listeners):
                all_back = time.monotonic() - killed_at
            if all(STORM_MESSAGE in lis.got for lis in self.listeners):
                caught_up = time.monotonic() - killed_at
                break
            gevent.sleep(0.05)
        if all_back is None and all(back(lis) for lis in self.listeners):
            all_back = time.monotonic() - killed_at
        back_s = [lis.back_at - killed_at for lis in self.listeners if lis.back_at is not None]
        return {
            "listeners": len(self.listeners),
            "rooms": len(self.senders),
            "back": sum(back(lis) for lis in self.listeners),
            "all_back_s": None if all_back is None else round(all_back, 1),
            "back_p50_s": _round(pct(back_s, 50)),
            "back_p99_s": _round(pct(back_s, 99)),
            "caught_up": sum(STORM_MESSAGE in lis.got for lis in self.listeners),
            "caught_up_s": None if caught_up is None else round(caught_up, 1),
            "confirmed": sum(s.confirmed.is_set() for s in self.senders),
            "handshakes": sum(lis.attempts for lis in self.listeners),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the daphne the bench kills")
    parser.add_argument("--sender-url", required=True, help="the daphne that stays")
    parser.add_argument("--reconnect-url", required=True, help="nginx")
    parser.add_argument("--origin", required=True)
    parser.add_argument("--sessions", required=True)
    parser.add_argument("--deadline", type=float, default=90.0)
    args = parser.parse_args()
    sessions = json.loads(Path(args.sessions).read_text())
    raise_fd_limit(len(sessions["listeners"]) + len(sessions["senders"]) + 200)
    storm = Storm(args, sessions)
    failed = storm.open_all()
    print(
        json.dumps(
            {
                "open": sum(lis.open for lis in storm.listeners),
                "failed": failed,
                "senders": sum(s.ws is not None for s in storm.senders),
            }
        ),
        flush=True,
    )
    if wait_line():
        print(json.dumps({"storm": storm.run(args.deadline)}), flush=True)
        wait_line()
    stop(storm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
