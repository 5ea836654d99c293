"""Opens idle chat websockets to one daphne process, in steps, for `bench.py`.

    python -m loadtest.idle --url ws://127.0.0.1:28001 --origin http://127.0.0.1:28080 \
        --sessions sessions.json --max 10000 --step 1000

`sessions.json` is [{"cookie": "sessionid=...", "conversation": N}, ...]; sockets are spread
over them round robin. It opens --step sockets, prints one JSON line
({"open": N, "failed": F, "closed": C}) and waits: a line on stdin opens the next step, the
end of stdin closes everything and exits.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import websocket  # noqa: E402
from gevent.pool import Pool  # noqa: E402


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, want))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class Idler:
    def __init__(self, url: str, origin: str, sessions: list[dict]) -> None:
        self.url, self.origin, self.sessions = url, origin, sessions
        self.sockets: list[websocket.WebSocket] = []
        self.closed = 0
        self.errors: dict[str, int] = {}  # why handshakes failed

    def open_one(self, i: int) -> bool:
        """Opens socket i; one retry, since the question is how many sockets a process
        holds, not how it copes with a burst of handshakes."""
        session = self.sessions[i % len(self.sessions)]
        for attempt in range(2):
            try:
                ws = websocket.create_connection(
                    f"{self.url}/ws/chat/{session['conversation']}",
                    cookie=session["cookie"],
                    origin=self.origin,
                    timeout=30,
                    skip_utf8_validation=True,
                )
                break
            except (websocket.WebSocketException, OSError) as exc:
                if attempt == 0:
                    gevent.sleep(1.0)
                    continue
                reason = f"{type(exc).__name__}: {exc}"[:120]
                self.errors[reason] = self.errors.get(reason, 0) + 1
                return False
        ws.settimeout(None)
        self.sockets.append(ws)
        gevent.spawn(self.read, ws)  # reading answers the server's pings
        return True

    def read(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                opcode, _ = ws.recv_data()
            except (websocket.WebSocketException, OSError):
                opcode = websocket.ABNF.OPCODE_CLOSE
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.closed += 1
                return

    def step(self, count: int) -> int:
        start = len(self.sockets) + self.closed
        pool = Pool(50)  # concurrent handshakes
        results = pool.map(self.open_one, range(start, start + count))
        return results.count(False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--sessions", required=True)
    parser.add_argument("--max", type=int, default=10000)
    parser.add_argument("--step", type=int, default=1000)
    args = parser.parse_args()
    limit = raise_fd_limit(args.max + 200)
    if limit < args.max + 100:
        print(
            json.dumps({"error": f"open files limit {limit} is below --max {args.max}"}), flush=True
        )
        return 2
    idler = Idler(args.url, args.origin, json.loads(Path(args.sessions).read_text()))
    while True:
        failed = idler.step(args.step)
        print(
            json.dumps(
                {
                    "open": len(idler.sockets) - idler.closed,
                    "failed": failed,
                    "closed": idler.closed,
                    "errors": idler.errors,
                }
            ),
            flush=True,
        )
        # In gevent's thread pool: a plain blocking read would freeze every greenlet, no
        # socket would answer daphne's pings, and daphne would drop them all as dead.
        if not gevent.get_hub().threadpool.apply(sys.stdin.readline):
            break  # end of input: the benchmark is done measuring
    for ws in idler.sockets:
        ws.abort()
    return 0


if __name__ == "__main__":
    sys.exit(main())
