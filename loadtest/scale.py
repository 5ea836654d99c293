"""What scale costs: one offered load, carried by 1, 2, 4 and 8 daphne processes on this machine.

    python -m loadtest.scale [--processes 1,2,4,8] [--rate 300] [--repeat 2]   (`make bench-scale`)

Each run is a fresh bench stack (loadtest.bench: nginx, gunicorn, N daphne, Postgres, Redis)
and one Locust step at a fixed rate; the rooms' members are spread over the processes by
nginx (least_conn), so a room of 10 has members on up to min(N, 10) processes and each
message reaches that many. On a 2-core machine the cores are overcommitted past 2 processes:
the figures that count are the costs per unit of work, not the latency:

- daphne CPU-seconds per 1,000 deliveries and per message (all processes together),
- the machine's busy CPU-seconds per 1,000 deliveries (everything: nginx, Locust, Postgres),
- Redis commands per delivery and Redis CPU-seconds per 1,000 deliveries (INFO, whole server:
  nothing else should use this Redis while it runs).

docs/capacity.md and loadtest/capacity.py take their per-process figures from this table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from loadtest.bench import PASSWORD, fresh_stack, run_step


@dataclass
class Cost:
    processes: int
    affinity: bool
    rate: float
    sent: int
    deliveries: int
    deliveries_per_s: float
    p99_ms: float | None
    lost: int
    refused: int
    daphne_cpu_s: float
    machine_cpu_s: float
    redis_cpu_s: float
    redis_commands: int

    @property
    def balance(self) -> str:
        """How nginx spread the sockets over the daphne."""
        return "conversation" if self.affinity else "least_conn"

    @property
    def daphne_per_1000(self) -> float:
        return self.daphne_cpu_s / max(self.deliveries, 1) * 1000

    @property
    def daphne_ms_per_message(self) -> float:
        return self.daphne_cpu_s / max(self.sent, 1) * 1000

    @property
    def machine_per_1000(self) -> float:
        return self.machine_cpu_s / max(self.deliveries, 1) * 1000

    @property
    def redis_per_1000(self) -> float:
        return self.redis_cpu_s / max(self.deliveries, 1) * 1000

    @property
    def redis_commands_per_delivery(self) -> float:
        return self.redis_commands / max(self.deliveries, 1)


def _redis_counters(url: str) -> tuple[int, float]:
    info = redis.Redis.from_url(url).info()
    return int(info["total_commands_processed"]), float(
        info["used_cpu_sys"] + info["used_cpu_user"]
    )


def measure(
    processes: int, rate: float, rooms: int, members: int, seconds: int, affinity: bool = False
) -> Cost:
    with fresh_stack("pubsub", ws_processes=processes, ws_affinity=affinity) as stack:
        users_file = stack.seed(rooms, members, PASSWORD, "scale")
        commands_before, redis_cpu_before = _redis_counters(stack.config.redis_url)
        started = time.monotonic()
        step = run_step(stack, users_file, "pubsub", rate, rooms, members, seconds)
        wall = time.monotonic() - started
        commands_after, redis_cpu_after = _redis_counters(stack.config.redis_url)
    s, cpu = step.summary, step.summary["cpu_percent"]
    deliveries = int(s.get("received", 0)) + int(s.get("duplicates", 0))
    daphne = sum(v for k, v in cpu.items() if k.startswith("ws")) / 100 * wall
    return Cost(
        processes=processes,
        affinity=affinity,
        rate=rate,
        sent=int(s.get("sent", 0)),
        deliveries=deliveries,
        deliveries_per_s=float(s.get("deliveries_per_s", 0)),
        p99_ms=s.get("fanout_p99_ms"),
        lost=int(s.get("lost", 0)),
        refused=int(s.get("refused", 0)),
        daphne_cpu_s=daphne,
        machine_cpu_s=cpu.get("machine", 0) / 100 * wall,
        redis_cpu_s=redis_cpu_after - redis_cpu_before,
        redis_commands=commands_after - commands_before,
    )


HEADER = (
    "| daphne | balanced by | deliveries/s | p99 ms | lost / refused "
    "| daphne CPU-s per 1,000 deliveries | daphne CPU-ms per message "
    "| machine CPU-s per 1,000 | Redis commands per delivery "
    "| Redis CPU-s per 1,000 |\n|---|---|---|---|---|---|---|---|---|---|"
)


def row(c: Cost) -> str:
    p99 = "-" if c.p99_ms is None else f"{c.p99_ms:.0f}"
    return (
        f"| {c.processes} | {c.balance} "
        f"| {c.deliveries_per_s:,.0f} | {p99} | {c.lost} / {c.refused} "
        f"| {c.daphne_per_1000:.3f} | {c.daphne_ms_per_message:.2f} | {c.machine_per_1000:.3f} "
        f"| {c.redis_commands_per_delivery:.3f} | {c.redis_per_1000:.4f} |"
    )


def summary_rows(costs: list[Cost]) -> list[str]:
    """Per process count: the median and range of the runs' per-unit costs."""
    lines = [
        "| daphne | balanced by | runs | daphne CPU-s per 1,000 deliveries (median, range) "
        "| Redis commands per delivery | machine CPU-s per 1,000 |",
        "|---|---|---|---|---|---|",
    ]
    for n, affinity in sorted({(c.processes, c.affinity) for c in costs}):
        runs = [c for c in costs if c.processes == n and c.affinity == affinity]
        d = [c.daphne_per_1000 for c in runs]
        lines.append(
            f"| {n} | {runs[0].balance} | {len(runs)} "
            f"| {statistics.median(d):.3f} ({min(d):.3f}-{max(d):.3f}) "
            f"| {statistics.median(c.redis_commands_per_delivery for c in runs):.3f} "
            f"| {statistics.median(c.machine_per_1000 for c in runs):.3f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--rate", type=float, default=300, help="offered msg/s, all rooms")
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2, help="runs per process count")
    parser.add_argument("--json", help="write every run's figures here too")
    parser.add_argument(
        "--affinity",
        choices=("off", "on", "both"),
        default="off",
        help="nginx balancing: least_conn (off), by conversation (on), or each in turn",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    if any(n < 1 for n in counts):
        parser.error("--processes: each count must be at least 1")
    costs: list[Cost] = []
    print(HEADER, flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.affinity]
    for _ in range(args.repeat):
        for n in counts:  # interleaved, so the machine's drift spreads over every count
            for affinity in modes:
                cost = measure(n, args.rate, args.rooms, args.members, args.seconds, affinity)
                costs.append(cost)
                print(row(cost), flush=True)
    print("\n".join(["", *summary_rows(costs)]), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps([c.__dict__ for c in costs], indent=2, default=float) + "\n"
        )
    return 0 if all(c.lost == 0 for c in costs) else 1


if __name__ == "__main__":
    sys.exit(main())
