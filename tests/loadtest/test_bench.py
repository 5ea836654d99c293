"""loadtest.bench's reading of a sweep: the knee is the highest rate that held twice."""

from __future__ import annotations

from loadtest.bench import Step, goodput_lines, knee_step


def _step(rate: float, p99: float, label: str = "", deliveries: float = 0.0) -> Step:
    summary = {
        "sent": 100,
        "fanout_p99_ms": p99,
        "lost": 0,
        "duplicates": 0,
        "reordered": 0,
        "rejected": 0,
        "refused": 0,
        "deliveries_per_s": deliveries or rate * 10,
    }
    return Step("pubsub", rate, summary, label)


def test_the_knee_is_the_highest_rate_every_confirmation_held_at():
    sweep = [_step(400, 20), _step(500, 60), _step(600, 150)]
    # 500 held in the sweep and once more, then missed; 400 held every time.
    steps = [
        *sweep,
        _step(500, 70, "confirm"),
        _step(500, 130, "confirm"),
        _step(400, 25, "confirm"),
        _step(400, 30, "confirm", 3990),
    ]
    assert knee_step(steps).rate == 400
    assert knee_step(steps).label == "confirm"
    lines = goodput_lines([*steps, _step(800, 400, "2x", 7980)])
    assert any("(400 msg/s, 3990 deliveries/s)" in line for line in lines)
    assert any(line.startswith("| 2x | 1 | 200%") for line in lines)


def test_without_a_confirmation_the_sweep_s_highest_sustainable_rate_is_the_knee():
    steps = [_step(400, 20), _step(500, 60), _step(600, 150)]
    assert knee_step(steps).rate == 500
    assert knee_step([_step(400, 150)]) is None
    assert knee_step([_step(400, 20), _step(400, 150, "confirm")]) is None
