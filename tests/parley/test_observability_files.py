"""The dashboard and alert rules parse and name only metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import parley.metrics  # noqa: F401  (registers the metrics)
from tests import preflight
from tests.tiers import missing

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
METRIC_RE = re.compile(r"\bparley_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def known_series() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("parley_"):
            names.add(family.name)
            names.update(family.name + s for s in SUFFIXES)
    return names


def test_dashboard_parses_and_names_only_existing_metrics():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in METRIC_RE.findall(e)}
    assert used, "the dashboard queries no Parley metric"
    assert used <= known_series(), used - known_series()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "websockets",
        "deliveries",
        "p99 broadcast",
        "replays",
        "gaps",
        "refusals",
        "errors",
    ):
        assert topic in titles


def test_alert_rules_are_valid_and_name_only_existing_metrics():
    path = DEPLOY / "alerts.yml"
    rules = yaml.safe_load(path.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "ParleyNotReady",
        "ParleySequenceGaps",
        "ParleyBroadcastLatencyHigh",
        "ParleySocketsNearLimit",
    }
    for alert in alerts:
        assert set(alert) >= {"alert", "expr", "for", "labels", "annotations"}
        assert METRIC_RE.findall(alert["expr"]) and set(METRIC_RE.findall(alert["expr"])) <= (
            known_series()
        )
    # Debian's prometheus package's promtool, unpacked by tests/preflight.py.
    promtool = preflight.promtool_path()
    if not promtool:
        missing(
            "promtool", "the alert rules got the structural checks only", "make .tools/bin/promtool"
        )
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
