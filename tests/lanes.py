"""`make test` in two lanes on a 2-core machine: everything but the container tests in one
pytest process; beside it, the container tests (mostly waiting for Docker builds and
Compose) and then the websocket suite on the stock runtime (`make test-stock`), each in a
pytest process of its own.

Each run is its own pytest process with its own test database and Redis key prefixes
(PARLEY_TEST_LANE, read by tests/_env.py); the native stacks' fixed ports, run directories
and Redis dbs are all in the main lane. The main lane prints as it goes; the side lane's
output is kept in files and printed after it, so the two never interleave.

Usage: python -m tests.lanes [pytest args for every run...]; exit status: the first run's
that failed, else 0.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time

MAIN = ["-m", "not containers"]
# Beside the main lane, one after the other.
SIDE = {
    "containers": (["-m", "containers"], {}),
    # What `make test-stock` runs.
    "stock": (
        [
            "tests/chat",
            "tests/parley_runtime",
            "-m",
            "not slow and not stack and not browser and not containers",
        ],
        {"PARLEY_RUNTIME": "stock"},
    ),
}
NO_TESTS_COLLECTED = 5  # pytest's exit status when a lane's marker selects nothing


def pytest(args: list[str], lane: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        env={**os.environ, "PARLEY_TEST_LANE": lane, **env},
        **kwargs,
    )


def run(extra: list[str]) -> int:
    started = time.monotonic()
    results: dict[str, int] = {}
    took: dict[str, float] = {}
    current: list[subprocess.Popen] = []
    stopping = threading.Event()
    with contextlib.ExitStack() as files:
        logs = {name: files.enter_context(tempfile.TemporaryFile("w+")) for name in SIDE}

        def side_lane() -> None:
            for name, (args, env) in SIDE.items():
                if stopping.is_set():
                    return
                proc = pytest(
                    [*args, *extra], name, env, stdout=logs[name], stderr=subprocess.STDOUT
                )
                current[:] = [proc]
                results[name] = proc.wait()
                took[name] = time.monotonic() - started

        side = threading.Thread(target=side_lane)
        side.start()
        try:
            results["main"] = pytest([*MAIN, *extra], "main", {}).wait()
            took["main"] = time.monotonic() - started
            print(
                f"\n=== lanes: main lane done ({took['main']:.0f} s); "
                "waiting for the side lane (containers, then stock)",
                flush=True,
            )
            side.join()
        finally:
            stopping.set()
            for proc in current:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=60)
            side.join()
        for name, log in logs.items():
            log.seek(0)
            print(f"=== lanes: {name} output (done at {took.get(name, 0):.0f} s)")
            sys.stdout.write(log.read())
    print("=== lanes: " + ", ".join(f"{lane} exit {code}" for lane, code in results.items()))
    for lane in ("main", *SIDE):
        code = results.get(lane, 1)  # a run that never finished failed
        if code not in (0, NO_TESTS_COLLECTED):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
