"""python -m loadtest.checker [--seconds 60 | --duration 30m] [--seed N]
                            [--runtime tuned|stock|both]

Exit status 0 when every check passed, 1 when one failed (the report says which, with the
seed and the minimal history), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import random
import re
import sys

from loadtest.checker.run import Options, run_each_runtime


def duration(text: str) -> float:
    """Seconds from "90", "90s", "30m", "2h" or "1h30m"."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 90s, 30m, 1h)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.checker",
        description="Randomized, seeded delivery checker through nginx -> daphne on a private "
        "stack with its own Redis and Postgres (loadtest/README.md).",
    )
    parser.add_argument(
        "--seconds",
        "--duration",
        dest="seconds",
        type=duration,
        default=60.0,
        help="how long traffic and faults run: 60, 90s, 30m, 2h (default 60)",
    )
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: random)")
    parser.add_argument(
        "--runtime",
        choices=["tuned", "stock", "both"],
        default="tuned",
        help="PARLEY_RUNTIME of the stack; both: a run each, at the same time, same seed",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        default=18800,
        help="gunicorn on this port, daphne +1 and +2, nginx +80, metrics +1000 (default "
        "18800); with --runtime both, stock's stack is 10 ports higher",
    )
    parser.add_argument(
        "--rooms", type=int, default=3, help="conversations, 3 or 4 pages each (default 3)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.5, help="messages per second each page sends (default 0.5)"
    )
    parser.add_argument(
        "--behind",
        type=int,
        default=300,
        help="a page away comes back at least this many messages behind",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=20.0,
        help="at a checkpoint, pages that make no progress for this long have "
        "failed to settle (default 20 s)",
    )
    parser.add_argument(
        "--edits",
        type=float,
        default=0.04,
        help="share of a page's typing turns that edit one of its own recent messages "
        "(default 0.04)",
    )
    parser.add_argument(
        "--deletes",
        type=float,
        default=0.03,
        help="share of a page's typing turns that delete one (default 0.03)",
    )
    parser.add_argument(
        "--guests",
        type=float,
        default=20.0,
        help="a member adds a guest, who later leaves, about this many seconds apart "
        "(default 20; 0: never)",
    )
    parser.add_argument(
        "--shallow",
        type=float,
        default=0.25,
        help="share of page loads that do not scroll back past the newest page (default 0.25)",
    )
    parser.add_argument(
        "--stop-at-failure",
        action="store_true",
        help="once a checkpoint (before a restore) failed, no more faults: straight to the end",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.rooms < 2:
        print("--rooms must be at least 2", file=sys.stderr)
        return 2
    if min(args.edits, args.deletes) < 0 or args.edits + args.deletes > 1:
        print("--edits and --deletes are shares: each >= 0, together <= 1", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    runtimes = ["tuned", "stock"] if args.runtime == "both" else [args.runtime]
    options = Options(
        seed=seed,
        seconds=args.seconds,
        port_base=args.port_base,
        rooms=args.rooms,
        rate=args.rate,
        behind=args.behind,
        stall=args.stall,
        stop_at_failure=args.stop_at_failure,
        edit_p=args.edits,
        delete_p=args.deletes,
        guest_every=args.guests,
        shallow=args.shallow,
        name="cli",
    )
    failed = []
    for runtime, result in zip(runtimes, run_each_runtime(options, runtimes), strict=True):
        print(result.report, flush=True)
        if not result.ok:
            failed.append(runtime)
    if len(runtimes) > 1:
        verdicts = ", ".join(f"{r} {'FAIL' if r in failed else 'PASS'}" for r in runtimes)
        print(f"=== runtimes: {verdicts}; seed {seed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
