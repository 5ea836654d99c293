"""Parley's capacity model: measured per-process figures -> pods, Redis shards, PgBouncer and
Postgres for an expected peak (docs/capacity.md).

    python -m loadtest.capacity S R [--room-size M] [--pages P]   (`make capacity S=... R=...`)

S is the peak of open websockets, R the peak deliveries per second (one message to a room
of M members online is M deliveries). Every figure the plan rests on is a `Figure` below,
with where it was measured; `make bench-scale` (loadtest/scale.py) and `make bench` measure
them again on your machines. Each step of the plan says which figure it used, and the
plan ends with the resource nearest its limit: the next bottleneck.

The deploy/k8s production overlay's HPA maxima are this model's plan for its example
(tests/k8s check that they agree).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

# `make bench-scale` (loadtest/scale.py --json): the 1/2/4/8-process runs the cost figures
# are fitted to.
SCALE_RUNS = Path(__file__).resolve().with_name("SCALE.json")

# Every step keeps this share of a measured limit free for bursts, as the sizing rule always
# has (docs/kubernetes.md).
HEADROOM = 0.7


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str


# --- measured figures (a 2-CPU machine holding everything: floors, not ceilings) ---------
FIGURES = {
    "sockets_per_ws": Figure(
        5_000,
        "open websockets per daphne process",
        "loadtest/RESULTS.md 'Idle sockets': 10,000 held at 18-19 MiB per 1,000 and 7% of "
        "a core; half of that is kept for bursts of traffic",
    ),
    "stores_per_postgres_core": Figure(
        3_000,
        "messages stored per second per Postgres core (batched stores)",
        "loadtest/RESULTS.md 2026-12-05: 800 msg/s at 20-26% of one core",
    ),
    "store_hold_seconds": Figure(
        0.002,
        "seconds a store holds its server connection (one statement, commit included)",
        "RESULTS.md 2026-12-04: Postgres needs a fraction of a millisecond per store; 2 ms "
        "covers a batched statement of up to 32 sends",
    ),
    "pgbouncer_queries_per_core": Figure(
        20_000,
        "queries per second one PgBouncer process (one core) passes",
        "loadtest/RESULTS.md 2026-12-05 'PgBouncer's hop': 2-3% of a core at 600 msg/s "
        "(~900 queries/s with the page reads); a straight-line extrapolation, not measured at "
        "that rate",
    ),
    "pages_per_web_process": Figure(
        230,
        "conversation pages (50 messages) per second per gunicorn worker",
        "docs/loadtesting.md: 451-463 pages/s through nginx with 2 workers",
    ),
    "ws_cpu_per_process": Figure(
        1.0,
        "cores per ws pod (one event loop: limits.cpu 1)",
        "deploy/k8s/base/ws.yaml",
    ),
}


@dataclass(frozen=True)
class Line:
    """A cost per message that grows with the processes it reaches: base + per_process x N."""

    base: float
    per_process: float

    def at(self, processes: float) -> float:
        return self.base + self.per_process * processes


def scale_runs(path: Path = SCALE_RUNS) -> list[dict]:
    """The runs with nginx's default balancing (least_conn): a room's members spread."""
    return [r for r in json.loads(path.read_text()) if not r.get("affinity")]


def fit(runs: list[dict], cost: str) -> Line:
    """The straight line through the medians at the fewest and the most processes measured;
    the counts between are left out, so that they check the line (`validate`)."""
    counts = sorted({r["processes"] for r in runs})
    if len(counts) < 2:
        raise ValueError("fitting needs runs at two process counts or more")

    def median(n: int) -> float:
        return statistics.median(r[cost] / r["sent"] for r in runs if r["processes"] == n)

    lo, hi = counts[0], counts[-1]
    slope = (median(hi) - median(lo)) / (hi - lo)
    return Line(median(lo) - slope * lo, slope)


_RUNS = scale_runs()
# CPU-seconds per message sent, by the processes a message reaches (min(room size, ws pods)).
WS_COST = fit(_RUNS, "daphne_cpu_s")
REDIS_COST = fit(_RUNS, "redis_cpu_s")
_SCALE_SOURCE = (
    f"loadtest/SCALE.json (make bench-scale: {len(_RUNS)} runs at 1-"
    f"{max(r['processes'] for r in _RUNS)} daphne, {_RUNS[0]['rate']:g} msg/s in rooms of 10)"
)
FIGURES |= {
    "ws_cpu_per_message": Figure(
        WS_COST.base,
        "daphne CPU-seconds per message, plus the next figure per process",
        _SCALE_SOURCE,
    ),
    "ws_cpu_per_message_per_process": Figure(
        WS_COST.per_process,
        "daphne CPU-seconds per message for each process the message reaches",
        _SCALE_SOURCE,
    ),
    "redis_cpu_per_message": Figure(
        REDIS_COST.base, "Redis CPU-seconds per message (pubsub layer)", _SCALE_SOURCE
    ),
    "redis_cpu_per_message_per_process": Figure(
        REDIS_COST.per_process,
        "Redis CPU-seconds per message for each subscribed process it reaches",
        _SCALE_SOURCE,
    ),
}


def figure(name: str) -> float:
    return FIGURES[name].value


def ws_cpu_per_delivery(room_size: int, processes: int) -> float:
    """A message reaches the processes that hold its room's members: at most one per member."""
    return WS_COST.at(min(room_size, processes)) / room_size


@dataclass
class Step:
    what: str
    count: int
    formula: str
    rests_on: tuple[str, ...]
    utilisation: float  # of the measured limit, at the peak, for the count chosen


@dataclass
class Plan:
    sockets: int
    deliveries_per_s: float
    room_size: int
    pages_per_s: float
    steps: list[Step] = field(default_factory=list)

    def count(self, what: str) -> int:
        return next(s.count for s in self.steps if s.what == what)

    @property
    def bottleneck(self) -> Step:
        return max(self.steps, key=lambda s: s.utilisation)


def ws_pods(sockets: int, deliveries_per_s: float, room_size: int = 10) -> int:
    """The sizing rule (docs/kubernetes.md): sockets or CPU, with headroom, at least two, plus
    one spare for rollouts and drains. D, a pod's deliveries per second, is costed with the
    room's members spread over as many pods as it has members (the worst case)."""
    by_sockets = math.ceil(sockets / (HEADROOM * figure("sockets_per_ws")))
    per_pod = figure("ws_cpu_per_process") / ws_cpu_per_delivery(room_size, room_size)
    by_cpu = math.ceil(deliveries_per_s / (HEADROOM * per_pod))
    return max(by_sockets, by_cpu, 2) + 1


def plan(
    sockets: int, deliveries_per_s: float, room_size: int = 10, pages_per_s: float | None = None
) -> Plan:
    if sockets < 0 or deliveries_per_s < 0 or room_size < 1:
        raise ValueError("sockets and deliveries must be >= 0, the room size >= 1")
    # Without a figure of its own: every open page reloaded once in ten minutes, on average.
    pages = sockets / 600 if pages_per_s is None else pages_per_s
    p = Plan(sockets, deliveries_per_s, room_size, pages)
    ws = ws_pods(sockets, deliveries_per_s, room_size)
    p.steps.append(
        Step(
            "ws pods",
            ws,
            "max(ceil(S / (0.7 C)), ceil(R / (0.7 D)), 2) + 1",
            ("sockets_per_ws", "ws_cpu_per_message", "ws_cpu_per_message_per_process"),
            max(
                sockets / ((ws - 1) * figure("sockets_per_ws")),
                deliveries_per_s * ws_cpu_per_delivery(room_size, ws) / (ws - 1),
            ),
        )
    )
    web = max(math.ceil(pages / (HEADROOM * figure("pages_per_web_process"))), 2) + 1
    p.steps.append(
        Step(
            "web pods (1 worker each)",
            web,
            "max(ceil(P / (0.7 pages per worker)), 2) + 1",
            ("pages_per_web_process",),
            pages / ((web - 1) * figure("pages_per_web_process")),
        )
    )
    messages = deliveries_per_s / room_size
    redis_cores = messages * REDIS_COST.at(min(room_size, ws))
    shards = max(math.ceil(redis_cores / HEADROOM), 1)
    p.steps.append(
        Step(
            "Redis shards (one core each)",
            shards,
            "ceil(R / M x (Redis CPU per message + per process x min(M, ws pods)) / 0.7)",
            ("redis_cpu_per_message", "redis_cpu_per_message_per_process"),
            redis_cores / shards,
        )
    )
    pg_cores = max(math.ceil(messages / (HEADROOM * figure("stores_per_postgres_core"))), 2)
    p.steps.append(
        Step(
            "Postgres cores (primary)",
            pg_cores,
            "max(ceil(R / M / (0.7 stores per core)), 2)",
            ("stores_per_postgres_core",),
            messages / (pg_cores * figure("stores_per_postgres_core")),
        )
    )
    # Little's law: stores in flight = stores/s x hold time; x 3 for page reads and bursts.
    pool = max(math.ceil(messages * figure("store_hold_seconds") * 3), 10)
    queries = messages + pages * 3  # a page: session, conversation, messages
    bouncers = max(math.ceil(queries / (HEADROOM * figure("pgbouncer_queries_per_core"))), 2)
    p.steps.append(
        Step(
            "PgBouncer pods",
            bouncers,
            "max(ceil((R / M + 3 P) / (0.7 queries per core)), 2)",
            ("pgbouncer_queries_per_core",),
            queries / (bouncers * figure("pgbouncer_queries_per_core")),
        )
    )
    per_bouncer = math.ceil(pool / bouncers)
    p.steps.append(
        Step(
            "server connections per PgBouncer (default_pool_size)",
            per_bouncer,
            "ceil(max(R / M x hold x 3, 10) / PgBouncer pods)",
            ("store_hold_seconds",),
            messages * figure("store_hold_seconds") / max(per_bouncer * bouncers, 1),
        )
    )
    return p


def render(p: Plan) -> str:
    lines = [
        f"Peak: {p.sockets:,} sockets, {p.deliveries_per_s:,.0f} deliveries/s "
        f"({p.deliveries_per_s / p.room_size:,.0f} messages/s in rooms of {p.room_size}), "
        f"{p.pages_per_s:,.0f} pages/s",
        "",
        "| what | count | rule | at the peak, of the measured limit | rests on |",
        "|---|---|---|---|---|",
    ]
    for s in p.steps:
        lines.append(
            f"| {s.what} | {s.count} | `{s.formula}` | {s.utilisation:.0%} "
            f"| {', '.join(s.rests_on)} |"
        )
    b = p.bottleneck
    lines += ["", f"Next bottleneck: {b.what} ({b.utilisation:.0%} of its measured limit).", ""]
    lines += ["Figures:"] + [
        f"- {name} = {f.value:g} {f.unit} ({f.source})" for name, f in FIGURES.items()
    ]
    return "\n".join(lines)


def validate(runs: list[dict]) -> list[str]:
    """The fitted lines' predictions next to every run, the counts left out of the fit too."""
    lines = [
        "| daphne | daphne CPU-ms per message: measured, predicted (error) "
        "| Redis CPU-us per message: measured, predicted (error) |",
        "|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: r["processes"]):
        n, sent = r["processes"], r["sent"]
        cells = []
        for cost, line, unit in (("daphne_cpu_s", WS_COST, 1e3), ("redis_cpu_s", REDIS_COST, 1e6)):
            measured, predicted = r[cost] / sent * unit, line.at(n) * unit
            cells.append(
                f"{measured:.2f}, {predicted:.2f} ({(predicted - measured) / measured:+.0%})"
            )
        lines.append(f"| {n} | {cells[0]} | {cells[1]} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sockets", type=int, nargs="?", help="S: peak open websockets")
    parser.add_argument("deliveries", type=float, nargs="?", help="R: peak deliveries per second")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="print the model's per-message costs next to every run in loadtest/SCALE.json",
    )
    parser.add_argument("--room-size", type=int, default=10, help="M: members online per room")
    parser.add_argument("--pages", type=float, help="P: pages per second (default S / 600)")
    args = parser.parse_args(argv)
    if args.validate:
        print("\n".join(validate(_RUNS)))
        return 0
    if args.sockets is None or args.deliveries is None:
        parser.error("give S and R (or --validate)")
    try:
        print(render(plan(args.sockets, args.deliveries, args.room_size, args.pages)))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
