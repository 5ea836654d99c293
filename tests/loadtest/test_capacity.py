"""The capacity model (loadtest/capacity.py): its rule at each bound, its fit to the measured
runs in loadtest/SCALE.json, and the plan's steps and bottleneck."""

from __future__ import annotations

import json
import math

import pytest

from loadtest import capacity
from loadtest.capacity import HEADROOM, figure, plan, ws_pods


def test_sockets_at_the_bound_fit_and_one_past_adds_a_pod() -> None:
    per_pod = HEADROOM * figure("sockets_per_ws")
    at = int(per_pod * 10)
    assert ws_pods(at, 0) == 10 + 1
    assert ws_pods(at + 1, 0) == 11 + 1


def test_deliveries_at_the_bound_fit_and_one_past_adds_a_pod() -> None:
    """D is costed with a room's members on as many pods as it has members."""
    room = 10
    per_pod = HEADROOM / capacity.ws_cpu_per_delivery(room, room)
    at = math.floor(per_pod * 5)
    assert ws_pods(0, at, room) == 5 + 1
    assert ws_pods(0, math.ceil(per_pod * 5) + 1, room) == 6 + 1


def test_never_fewer_than_two_pods_and_a_spare() -> None:
    assert ws_pods(0, 0) == 3
    assert plan(0, 0).count("web pods (1 worker each)") == 3


def test_the_fit_passes_through_the_fewest_and_most_processes_measured() -> None:
    runs = capacity.scale_runs()
    counts = sorted({r["processes"] for r in runs})
    for n in (counts[0], counts[-1]):
        per_message = sorted(r["daphne_cpu_s"] / r["sent"] for r in runs if r["processes"] == n)
        median = (
            per_message[len(per_message) // 2]
            if len(per_message) % 2
            else (per_message[len(per_message) // 2 - 1] + per_message[len(per_message) // 2]) / 2
        )
        assert capacity.WS_COST.at(n) == pytest.approx(median)
    # A message that reaches more processes costs more: the measured direction.
    assert capacity.WS_COST.per_process > 0 and capacity.REDIS_COST.per_process > 0


def test_fit_needs_two_process_counts(tmp_path) -> None:
    runs = [{"processes": 2, "sent": 10, "daphne_cpu_s": 1.0}]
    with pytest.raises(ValueError, match="two process counts"):
        capacity.fit(runs, "daphne_cpu_s")


def test_runs_balanced_by_conversation_stay_out_of_the_fit(tmp_path) -> None:
    path = tmp_path / "scale.json"
    path.write_text(
        json.dumps(
            [
                {"processes": 1, "affinity": False, "sent": 10, "daphne_cpu_s": 1.0},
                {"processes": 8, "affinity": True, "sent": 10, "daphne_cpu_s": 1.0},
            ]
        )
    )
    assert [r["processes"] for r in capacity.scale_runs(path)] == [1]


def test_validation_puts_every_run_beside_its_prediction() -> None:
    rows = capacity.validate(capacity.scale_runs())
    assert len(rows) == 2 + len(capacity.scale_runs())
    assert all(row.count("(") == 2 for row in rows[2:])


@pytest.mark.parametrize(
    ("sockets", "deliveries", "ws"),
    [(100_000, 10_000, 30), (1_000_000, 100_000, 287)],
)
def test_the_documented_examples(sockets: int, deliveries: int, ws: int) -> None:
    """docs/capacity.md's two examples; the first is the production overlay's ws maximum."""
    p = plan(sockets, deliveries)
    assert p.count("ws pods") == ws
    assert p.bottleneck.what == "ws pods"
    assert p.count("PgBouncer pods") >= 2 and p.count("Postgres cores (primary)") >= 2


def test_small_rooms_need_more_postgres_for_the_same_deliveries() -> None:
    """Rooms of 2: five times the messages, and so the stores, of rooms of 10 for the same
    deliveries; the plan's bottleneck is whichever step is nearest its limit."""
    small, usual = plan(10_000, 100_000, room_size=2), plan(10_000, 100_000)
    pg = "Postgres cores (primary)"
    assert small.count(pg) >= 4 * usual.count(pg)
    assert small.bottleneck.utilisation == max(s.utilisation for s in small.steps)


@pytest.mark.parametrize(("args", "message"), [((-1, 0), "sockets"), ((0, 0, 0), "room size")])
def test_impossible_peaks_are_refused(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        plan(*args)


def test_the_command_prints_the_plan_and_the_figures_it_rests_on(capsys) -> None:
    assert capacity.main(["100000", "10000"]) == 0
    out = capsys.readouterr().out
    assert "| ws pods | 30 |" in out and "Next bottleneck: ws pods" in out
    for name in capacity.FIGURES:
        assert f"- {name} = " in out
