"""Where one daphne's CPU goes past the knee: a profile (py-spy) of the only daphne of a bench
stack during load steps at multiples of a rate, split into what refusals cost and what the
deliveries cost, per refused send and per delivered message.

    python -m loadtest.profile --rate 800 --factors 1,3 [--seconds 20]

For each factor it runs the bench's load step (loadtest.bench.run_step: rooms of 10, the
per-socket limit lifted) while py-spy samples the daphne, then prints, per step: deliveries
and refusals per second, the daphne's CPU, the share of its samples in the refusal path
(the frames of a send that is refused, from reading it to writing the refusal), and CPU
per refused send and per delivered message.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from loadtest.bench import PASSWORD, fresh_stack, run_step, stack_cpu

# A sample is the refusal path's when one of these is on its stack: the consumer's refusals
# (chat.consumers) and, for the refusals before issue 29's, the admission check's send path.
REFUSAL_FRAMES = ("refuse_busy", "refuse_send", "_busy (chat/consumers.py")
# ... and a delivery's when one of these is (and no refusal frame is).
DELIVERY_FRAMES = ("message_send", "ConversationStream", "deliver (chat/", "dispatch (chat/hub")


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def shares(raw: Path) -> dict[str, float]:
    """Samples by part of the work, as shares of all the process's samples."""
    parts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        if any(f in stack for f in REFUSAL_FRAMES):
            parts["refusal"] += int(count)
        elif any(f in stack for f in DELIVERY_FRAMES):
            parts["delivery"] += int(count)
        else:
            parts["other"] += int(count)
    total = sum(parts.values()) or 1
    return {k: v / total for k, v in parts.items()} | {"samples": float(total)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, required=True, help="R: msg/s, all rooms")
    parser.add_argument("--factors", default="1,3")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--members", type=int, default=10)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="parley-profile-"))
    print(
        "| step | offered msg/s | deliveries/s | refused/s | daphne CPU % | refusal share "
        "| delivery share | other | CPU per refusal | CPU per delivery |\n"
        "|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    with fresh_stack("pubsub") as stack:
        stack.stop_process(stack.ws_names[1])  # one daphne: nginx sends every socket to it
        users = stack.seed(args.rooms, args.members, PASSWORD, "bench")
        pid = stack.procs[stack.ws_names[0]]["pid"]
        for factor in (float(f) for f in args.factors.split(",")):
            rate = args.rate * factor
            raw = out / f"{factor:g}x.txt"
            before = stack_cpu(stack)[stack.ws_names[0]]
            started = time.monotonic()
            spy = profile(pid, args.seconds, raw)
            step = run_step(
                stack, users, "pubsub", rate, args.rooms, args.members, args.seconds,
                label=f"{factor:g}x", drain_seconds=10,
            )  # fmt: skip
            spy.wait(timeout=120)
            wall = time.monotonic() - started
            cpu = stack_cpu(stack)[stack.ws_names[0]] - before
            s = step.summary
            part = shares(raw)
            deliveries = (s.get("deliveries_per_s") or 0) * args.seconds
            refused = s.get("refused", 0)
            per_refusal = cpu * part.get("refusal", 0) / refused * 1e6 if refused else None
            per_delivery = (
                cpu * (1 - part.get("refusal", 0)) / deliveries * 1e6 if deliveries else None
            )
            print(
                f"| {factor:g}x | {s.get('offered_msgs_per_s', 0):.0f} "
                f"| {s.get('deliveries_per_s', 0):.0f} | {refused / args.seconds:.0f} "
                f"| {100 * cpu / wall:.0f} | {100 * part.get('refusal', 0):.1f}% "
                f"| {100 * part.get('delivery', 0):.1f}% | {100 * part.get('other', 0):.1f}% "
                f"| {'-' if per_refusal is None else f'{per_refusal:.0f} us'} "
                f"| {'-' if per_delivery is None else f'{per_delivery:.0f} us'} |",
                flush=True,
            )
            time.sleep(5)
    print(f"profiles (py-spy raw): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
