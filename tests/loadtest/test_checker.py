"""The delivery checker (loadtest/checker, `make soak`) for a bounded time on both runtimes
at once: about 60 s of traffic and faults through nginx -> daphne, each on a private stack
with its own Redis and Postgres (throwaway instances on free ports): tuned on gunicorn :18700,
daphne :18701/18702, nginx :18780, metrics :19700; stock 10 higher (all moved by
TEST_INSTANCE). Every page must show every stored entry once, in order, with no holes, each
message as the database now has it (edited, or deleted and its text nowhere), and be
connected at the end; every confirmed send must be stored once, every confirmed edit and
delete kept, every add and leave in the stream; a guest who left must have been closed with
4403. The run must have made at least one edit, delete, add and leave.

A new seed every run (printed, with the minimal history, when it fails); CHECKER_SEED pins
it and CHECKER_SECONDS sets the duration. A failure is a defect to fix, not a flake: rerun
it with `python -m loadtest.checker --seed <seed> --runtime <runtime>`.
"""

from __future__ import annotations

import os
import random

import pytest

from loadtest.checker.run import Options, run_each_runtime
from tests import instance

# About 2.5 min on a 2-core machine (two stacks starting, 60 s of faults, the checks); the
# bound leaves room for a machine busy with other suites.
pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(900)]


def test_every_page_shows_every_stored_message_once_in_order():
    seed = int(os.environ.get("CHECKER_SEED") or random.SystemRandom().randrange(1, 2**31))
    results = run_each_runtime(
        Options(
            seed=seed,
            seconds=float(os.environ.get("CHECKER_SECONDS", "60")),
            port_base=instance.port(18700),
            name=f"test{instance.SUFFIX}",
        ),
        ["tuned", "stock"],
    )
    reports = "\n\n".join(r.report for r in results)
    print(reports)
    assert all(r.ok for r in results), reports
    for r in results:
        changes = r.stats["changes"]
        done = {kind: changes[kind].get("confirmed", 0) for kind in changes}
        assert all(done.values()), f"{r.options.runtime}: not every kind of change made: {done}"
        assert r.stats["left"] >= 1, f"{r.options.runtime}: no guest's page closed with 4403"
