"""`make test` in two lanes: the container tests (mostly waiting for Docker builds and
Compose) in one pytest process beside everything else in another, on a 2-core machine; the
second lane then runs the websocket suite on the stock runtime (`make test-stock`).

Each lane is its own pytest run with its own test database and Redis key prefixes
(PARLEY_TEST_LANE, read by tests/_env.py); the native stacks' fixed ports, run directories
and Redis dbs are all in the main lane. The main lane prints as it goes; the container
lane's output is kept in a file and printed after it, so the two never interleave.

Usage: python -m tests.lanes [pytest args for both lanes...]; exit status: the first lane's
that failed, else 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

LANES = {
    "main": ["-m", "not containers"],
    "containers": ["-m", "containers"],
}
# After the main lane, in its place: what `make test-stock` runs.
STOCK = [
    "tests/chat",
    "tests/parley_runtime",
    "-m",
    "not slow and not stack and not browser and not containers",
]
NO_TESTS_COLLECTED = 5  # pytest's exit status when a lane's marker selects nothing


def run(extra: list[str]) -> int:
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("w+", prefix="lane-containers-", suffix=".log") as log:
        side = subprocess.Popen(
            [sys.executable, "-m", "pytest", *LANES["containers"], *extra],
            env={**os.environ, "PARLEY_TEST_LANE": "containers"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            main = subprocess.call(
                [sys.executable, "-m", "pytest", *LANES["main"], *extra],
                env={**os.environ, "PARLEY_TEST_LANE": "main"},
            )
            print(
                f"\n=== lanes: main lane done ({time.monotonic() - started:.0f} s); "
                "the websocket suite on the stock runtime",
                flush=True,
            )
            stock = subprocess.call(
                [sys.executable, "-m", "pytest", *STOCK, *extra],
                env={**os.environ, "PARLEY_TEST_LANE": "stock", "PARLEY_RUNTIME": "stock"},
            )
            print(
                f"\n=== lanes: main lane done ({time.monotonic() - started:.0f} s); "
                "waiting for the container lane",
                flush=True,
            )
            containers = side.wait()
        finally:
            if side.poll() is None:
                side.terminate()
                side.wait(timeout=60)
        log.seek(0)
        print(f"=== lanes: container lane output ({time.monotonic() - started:.0f} s)")
        sys.stdout.write(log.read())
    results = {"main": main, "stock": stock, "containers": containers}
    print("=== lanes: " + ", ".join(f"{lane} exit {code}" for lane, code in results.items()))
    for code in results.values():
        if code not in (0, NO_TESTS_COLLECTED):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
