"""CI smoke load: the Locust load test, headless for 20 s, against a private native stack
(nginx, gunicorn, two daphne; ports 18180/18100/18101-18102, database
parley_stacktest_loadtest, Redis db 5). Every member must get every message once, in order.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack.harness import Stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "smoke-load-pass"
ROOMS, MEMBERS, RATE, SECONDS = 4, 5, 2.0, 20


@pytest.fixture(scope="module")
def stack():
    stack = Stack(
        name="loadtest", nginx_port=18180, web_port=18100, ws_ports=(18101, 18102), redis_db=5
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.mark.timeout(240)
def test_smoke_load_delivers_every_message_once_in_order(stack, tmp_path):
    users_file = tmp_path / "users.json"
    users_file.write_text(
        json.dumps(stack.seed(rooms=ROOMS, members=MEMBERS, password=PASSWORD, prefix="smoke"))
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "--config",
            "loadtest/locust.conf",
            "--headless",
            "--only-summary",
            "--host",
            stack.url,
            "--login-host",
            stack.web_url(),
            "--users-file",
            str(users_file),
            "--rooms",
            str(ROOMS),
            "--members",
            str(MEMBERS),
            "--users",
            str(ROOMS * MEMBERS),
            "--spawn-rate",
            str(ROOMS * MEMBERS),
            "--send-rate",
            str(RATE),
            "--run-time",
            f"{SECONDS}s",
            # Completeness is what this asserts; CI machines are shared, so the latency bound
            # only catches the pathological (the sizing figures come from `make bench`).
            "--p99-threshold-ms",
            "1000",
            "--csv",
            str(tmp_path / "stats"),
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SECONDS + 150,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"], summary["failures"]
    assert summary["recipients"] == ROOMS * MEMBERS
    assert summary["sent"] >= ROOMS * RATE * SECONDS / 2, summary  # it really sent
    assert summary["expected"] == summary["sent"] * MEMBERS
    assert summary["received"] == summary["expected"]
    assert summary["lost"] == summary["duplicates"] == summary["reordered"] == 0
    assert summary["rejected"] == 0
    assert "RESULT: PASS" in output

    with open(tmp_path / "stats_stats.csv") as f:
        stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    assert int(stats["WS", "connect"]["Request Count"]) == ROOMS * MEMBERS
    assert int(stats["WS", "send"]["Request Count"]) == summary["sent"]
    # Every delivery to a member other than the sender is one fan-out sample.
    assert int(stats["WS", "fanout"]["Request Count"]) == summary["expected"] - summary["sent"]
    assert int(stats["", "Aggregated"]["Failure Count"]) == 0
