"""`make test`: what the tiers need first (tests/preflight.py), then the suite in two lanes on
a 2-core machine, then a closing summary of every tier.

    python -m tests.lanes [pytest args]       (`make test`, `make test PYTEST_ARGS=...`)

The lanes: everything but the container tests in one pytest process; beside it, the
container tests (mostly waiting for Docker builds and Compose) and then the websocket suite
on the stock runtime (`make test-stock`), each in a pytest process of its own. TEST_LANES=0:
the same runs one after the other. With pytest args: one pytest process with those args,
whose preflight covers the tiers it selects (tests/tiers.py).

Each run is its own pytest process with its own test database and Redis key prefixes
(PARLEY_TEST_LANE, read by tests/_env.py); the native stacks' fixed ports, run directories
and Redis dbs are all in the main lane. The main lane prints as it goes; the side lane's
output is kept in files and printed after it, so the two never interleave.

SKIP_TIERS=containers,browser: those tiers do not run (nor is anything installed for them).
A tier that could not run, fully or at all, for want of a dependency is named in the closing
summary with what is missing, and fails the run (exit 6, tests/tiers.py) unless SKIP_TIERS
names it; otherwise the exit status is the first failed run's, else 0.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import preflight
from tests.tiers import TIERS_NOT_RUN, Tally

NO_TESTS_COLLECTED = 5  # pytest's exit status when a lane's marker selects nothing
STOCK_ARGS = [
    "tests/chat",
    "tests/parley_runtime",
    "-m",
    "not slow and not stack and not browser and not containers",
]


@dataclass
class Run:
    name: str
    args: list[str]
    tiers: tuple[str, ...]  # the tiers it may run
    env: dict[str, str] = field(default_factory=dict)
    code: int | None = None  # None: never finished
    done_at: float = 0.0


def plan(extra: list[str], lanes: int) -> tuple[list[Run], list[Run]]:
    """(main lane, side lane), each run after the other within its lane."""
    if extra:
        return [Run("pytest", extra, tuple(preflight.TIERS))], []
    stock = Run("stock", STOCK_ARGS, ("stock",), {"PARLEY_RUNTIME": "stock"})
    if not lanes:
        return [Run("main", [], ("unit", "k8s", "stack", "browser", "containers")), stock], []
    main = Run("main", ["-m", "not containers"], ("unit", "k8s", "stack", "browser"))
    return [main], [Run("containers", ["-m", "containers"], ("containers",)), stock]


def pytest(run: Run, reports: Path, **kwargs) -> subprocess.Popen:
    env = {
        **os.environ,
        "PARLEY_TEST_LANE": run.name if run.name != "pytest" else "",
        "PARLEY_TIER_REPORT": str(reports / f"{run.name}.json"),
        **run.env,
    }
    return subprocess.Popen([sys.executable, "-m", "pytest", *run.args], env=env, **kwargs)


def execute(main: list[Run], side: list[Run], reports: Path, started: float) -> None:
    current: list[subprocess.Popen] = []
    stopping = threading.Event()
    with contextlib.ExitStack() as files:
        logs = {run.name: files.enter_context(tempfile.TemporaryFile("w+")) for run in side}

        def side_lane() -> None:
            for run in side:
                if stopping.is_set():
                    return
                proc = pytest(run, reports, stdout=logs[run.name], stderr=subprocess.STDOUT)
                current[:] = [proc]
                run.code = proc.wait()
                run.done_at = time.monotonic() - started

        thread = threading.Thread(target=side_lane)
        thread.start()
        try:
            for run in main:
                run.code = pytest(run, reports).wait()
                run.done_at = time.monotonic() - started
            if side:
                names = ", then ".join(run.name for run in side)
                print(
                    f"\n=== lanes: main lane done ({time.monotonic() - started:.0f} s); "
                    f"waiting for the side lane ({names})",
                    flush=True,
                )
            thread.join()
        finally:
            stopping.set()
            for proc in current:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=60)
            thread.join()
        for run in side:
            logs[run.name].seek(0)
            print(f"=== lanes: {run.name} output (done at {run.done_at:.0f} s)")
            sys.stdout.write(logs[run.name].read())


def merge(runs: list[Run], reports: Path) -> tuple[Tally, set[str]]:
    """The runs' tallies as one, and the tiers of the runs that finished."""
    tally, finished = Tally(), set()
    for run in runs:
        path = reports / f"{run.name}.json"
        if not path.exists():
            continue
        one = Tally.read(path)
        finished.update(run.tiers)
        for tier, counts in one.counts.items():
            mine = tally.counts.setdefault(tier, {"passed": 0, "failed": 0, "skipped": 0})
            for outcome, n in counts.items():
                mine[outcome] += n
        for tier, deps in one.not_run.items():
            for dep, entry in deps.items():
                mine = tally.not_run.setdefault(tier, {}).setdefault(dep, {**entry, "tests": 0})
                mine["tests"] += entry["tests"]
        for tier, n in one.deselected.items():
            tally.deselected[tier] = tally.deselected.get(tier, 0) + n
        tally.preflight = tally.preflight or one.preflight
    return tally, finished


def tier_line(tier: str, tally: Tally, skip: set[str], ran: bool, finished: bool) -> str:
    counts = tally.counts.get(tier)
    lacking = tally.not_run.get(tier, {})
    if tier in skip:
        return "skipped on request (SKIP_TIERS)"
    if not ran:
        return "not selected"
    if not finished:
        return "DID NOT FINISH (its run stopped: output above)"
    if not counts:
        return "no tests selected"
    if lacking:
        not_run = max(entry["tests"] for entry in lacking.values())
        total = sum(counts.values())
        state = "NOT RUN" if not_run == total else f"ran in part ({not_run} of {total} not run)"
        return f"{state}, missing: {', '.join(lacking)}"
    state = f"ran: {counts['passed']} passed, {counts['failed']} failed"
    return state + (f", {counts['skipped']} skipped" if counts["skipped"] else "")


def summary(
    runs: list[Run], reports: Path, results: list[preflight.Result], skip: set[str]
) -> tuple[list[str], int]:
    """The closing summary's lines, and the exit status."""
    tally, finished = merge(runs, reports)
    results = results or [preflight.Result(**r) for r in tally.preflight]
    lines = ["", "=== make test: summary", "tiers:"]
    for tier in preflight.TIERS:
        ran = any(tier in run.tiers for run in runs)
        line = tier_line(tier, tally, skip, ran, tier in finished)
        lines.append(f"  {tier:<11} {line}")
    # What is missing: the preflight's findings, and what tests found missing themselves.
    missing = {
        r.name: r.detail + (f"\n      run: {r.fix}" if r.fix else "") for r in results if r.missing
    }
    for deps in tally.not_run.values():
        for dep, entry in deps.items():
            missing.setdefault(dep, entry["detail"])
    if missing:
        lines.append("missing:")
        lines += [f"  {name}: {detail}" for name, detail in missing.items()]
    lines.append(
        "runs: " + ", ".join(f"{run.name} exit {run.code} ({run.done_at:.0f} s)" for run in runs)
    )
    code = 0
    for run in runs:
        if run.code is None:
            code = code or 1
        elif run.code not in (0, NO_TESTS_COLLECTED, TIERS_NOT_RUN):
            code = code or run.code
    narrowed_to_nothing = [r for r in runs if r.name == "pytest" and r.code == NO_TESTS_COLLECTED]
    if narrowed_to_nothing and not tally.deselected:
        code = code or NO_TESTS_COLLECTED  # PYTEST_ARGS selected no test: say so
    gaps = [t for t in preflight.TIERS if t in tally.not_run]
    failing = [t for t in preflight.TIERS if tally.counts.get(t, {}).get("failed")]
    if code or gaps:
        why = []
        if code:
            why.append(f"tests failed in {', '.join(failing) or 'a run'} (output above)")
        if gaps:
            why.append(
                f"for want of what is missing, these tiers did not run (fully): "
                f"{', '.join(gaps)}; install it, or leave them out on purpose: "
                f"make test SKIP_TIERS={','.join(gaps)}"
            )
        lines.append("make test: FAILED: " + "; ".join(why))
        code = code or TIERS_NOT_RUN
    elif not runs:
        lines.append("make test: nothing run (SKIP_TIERS left every tier out)")
    else:
        lines.append("make test: passed")
    total = {k: sum(c[k] for c in tally.counts.values()) for k in ("passed", "failed", "skipped")}
    lines.append(
        f"tests: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped"
    )
    return lines, code


def main(extra: list[str]) -> int:
    started = time.monotonic()
    try:
        skip = preflight.skip_tiers()
    except ValueError as exc:
        print(f"make test: {exc}", file=sys.stderr)
        return 2
    main_lane, side_lane = plan(extra, int(os.environ.get("TEST_LANES", "2")))
    main_lane = [r for r in main_lane if set(r.tiers) - skip]
    side_lane = [r for r in side_lane if set(r.tiers) - skip]
    with tempfile.TemporaryDirectory(prefix="parley-make-test-") as tmp:
        reports = Path(tmp)
        results: list[preflight.Result] = []
        if not extra:
            results = preflight.ensure([t for t in preflight.TIERS if t not in skip])
            preflight.save(results, reports / "preflight.json")
            os.environ["PARLEY_PREFLIGHT"] = str(reports / "preflight.json")
        execute(main_lane, side_lane, reports, started)
        lines, code = summary(main_lane + side_lane, reports, results, skip)
    print("\n".join(lines), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
