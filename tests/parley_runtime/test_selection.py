"""Which runtime a process runs: PARLEY_RUNTIME, and stock whenever a pinned library is at
another version (one warning, naming it). Each case in a fresh interpreter, as a process
starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import parley_runtime
from parley_runtime.pins import PINS

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.metadata, json, logging, os, sys
real = importlib.metadata.version
fake = json.loads(os.environ.get("FAKE_VERSIONS", "{}"))
importlib.metadata.version = lambda name: fake.get(name) or real(name)
import django
django.setup()
from django.conf import settings
from channels.layers import get_channel_layer
import config.asgi
print(json.dumps({
    "mode": settings.PARLEY_RUNTIME,
    "layer": type(get_channel_layer()).__module__,
    "http": type(config.asgi.django_asgi_app).__name__,
}))
"""


def probe(**env: str) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={
            # The default is what is probed unless a test sets it (`make test-stock` sets
            # PARLEY_RUNTIME=stock for its own process).
            **{k: v for k, v in os.environ.items() if k != "PARLEY_RUNTIME"},
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO / "src"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


def test_the_tuned_runtime_by_default():
    chosen, _ = probe()
    assert chosen == {
        "mode": "tuned",
        "layer": "parley_runtime.layers",
        "http": "OneHopASGIHandler",
    }


def test_stock_when_asked():
    chosen, output = probe(PARLEY_RUNTIME="stock")
    assert chosen == {"mode": "stock", "layer": "channels_redis.pubsub", "http": "AdmittingHandler"}
    assert "tuned runtime disabled" not in output


def test_a_library_at_another_version_means_stock_and_one_warning_naming_it():
    chosen, output = probe(FAKE_VERSIONS=json.dumps({"daphne": "4.3.0"}))
    assert chosen["mode"] == "stock" and chosen["layer"] == "channels_redis.pubsub"
    warnings = [line for line in output.splitlines() if "tuned runtime disabled" in line]
    assert len(warnings) == 1, output
    record = json.loads(warnings[0])
    assert record["level"] == "WARNING"
    assert "daphne 4.3.0 is installed, pinned: 4.2.3" in record["msg"]


def test_an_unknown_runtime_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="PARLEY_RUNTIME must be one of tuned, stock"):
        parley_runtime.select("fast")


def test_the_pins_are_the_installed_versions_and_pyproject_pins_them_exactly():
    assert parley_runtime.version_mismatches() == []
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {
        dep.split("==")[0].strip().lower(): dep.split("==")[1].split(";")[0].strip()
        for dep in pyproject["project"]["dependencies"]
        if "==" in dep
    }
    assert {name: declared.get(name) for name in PINS} == PINS
