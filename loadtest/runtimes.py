"""The tuned runtime against the stock one, side by side in one run (`make bench-runtimes`).

Each round runs the same measurements once per runtime (PARLEY_RUNTIME, inherited by the
native stack's processes), alternating, on fresh stacks: broadcast at fixed offered rates
(deliveries/s, p99 fan-out, daphne CPU), idle sockets on one daphne (resident memory per
socket) and the conversation page through nginx (requests/s, gunicorn CPU per page). Several
rounds: the spread is printed, not the best. Writes loadtest/RUNTIMES.md. Not a test.

    python -m loadtest.runtimes [--rounds 2] [--rates 200,300] [--idle 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

from loadtest import bench

RESULTS = bench.REPO / "loadtest" / "RUNTIMES.md"
MODES = ("tuned", "stock")


def measure(mode: str, args: argparse.Namespace) -> dict[str, float | None]:
    os.environ["PARLEY_RUNTIME"] = mode
    figures: dict[str, float | None] = {}
    steps = bench.sweep("pubsub", args.rates, args.rooms, args.members, args.step_seconds, 2, [])
    for rate in args.rates:
        step = next((s for s in steps if s.rate == rate), None)
        summary = step.summary if step else {}
        figures[f"deliveries/s at {rate:g} msg/s"] = summary.get("deliveries_per_s")
        figures[f"p99 ms at {rate:g} msg/s"] = summary.get("fanout_p99_ms")
        cpu = summary.get("cpu_percent", {})
        figures[f"daphne CPU % at {rate:g} msg/s"] = (
            sum(v for k, v in cpu.items() if k.startswith("ws")) if cpu else None
        )
        figures[f"not arrived at {rate:g} msg/s"] = summary.get("lost")
    idle = bench.idle_sockets(args.idle, 1000)
    if len(idle.points) > 1:
        (n0, r0), (n1, r1) = idle.points[0], idle.points[-1]
        figures["idle KiB per socket"] = (r1 - r0) / (n1 - n0)
    page = bench.http_page(args.rooms, args.http_seconds)
    if page.latencies_ms:
        per_s = len(page.latencies_ms) / page.seconds
        figures["page req/s"] = per_s
        figures["page p99 ms"] = page.pct(0.99)
        figures["gunicorn CPU ms per page"] = page.cpu_percent.get("web", 0) * 10 / per_s
    print(f"{mode}: {figures}", flush=True)
    return figures


def spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    mid = statistics.median(got)
    text = f"{mid:.1f}" if mid < 100 else f"{mid:.0f}"
    return text + (f" ({min(got):.4g}-{max(got):.4g})" if len(got) > 1 else "")


def table(results: dict[str, list[dict]]) -> list[str]:
    names = list(results["tuned"][0])
    lines = [
        "| figure | tuned: median (range) | stock: median (range) | tuned / stock |",
        "|---|---|---|---|",
    ]
    for name in names:
        tuned = [r.get(name) for r in results["tuned"]]
        stock = [r.get(name) for r in results["stock"]]
        t = [v for v in tuned if v is not None]
        s = [v for v in stock if v is not None]
        ratio = (
            f"{statistics.median(t) / statistics.median(s):.2f}"
            if t and s and statistics.median(s)
            else "-"
        )
        lines.append(f"| {name} | {spread(tuned)} | {spread(stock)} | {ratio} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rates", default="200,300", help="offered msg/s, all rooms together")
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--step-seconds", type=int, default=15)
    parser.add_argument("--idle", type=int, default=3000, help="idle sockets on one daphne")
    parser.add_argument("--http-seconds", type=int, default=15)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for n in range(args.rounds):
        # Alternate which goes first: a machine that warms up or slows down favours neither.
        for mode in MODES if n % 2 == 0 else reversed(MODES):
            results[mode].append(measure(mode, args))
    lines = [
        "# Tuned runtime against stock (`make bench-runtimes`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {bench.machine()}. {args.rounds} rounds, "
        "each runtime once per round on fresh native stacks (pub/sub layer, 2 daphne, "
        f"{args.rooms} rooms of {args.members}, {args.step_seconds} s per rate; idle sockets "
        f"on one daphne up to {args.idle}; the page with {args.rooms} clients for "
        f"{args.http_seconds} s). docs/runtime.md explains each piece.",
        "",
        *table(results),
        "",
    ]
    text = "\n".join(lines)
    Path(args.results).write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
