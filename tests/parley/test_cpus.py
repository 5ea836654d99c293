"""Process counts follow the container's CPU limit (cgroup), not the host's cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parley.cpus import available_cpus, cgroup_cpu_quota

REPO = Path(__file__).resolve().parents[2]
HOST = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "100000 100000\n"}, 1.0),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu__cpu.cfs_quota_us": "150000\n", "cpu__cpu.cfs_period_us": "100000\n"}, 1.5),
        ({"cpu__cpu.cfs_quota_us": "-1\n", "cpu__cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1(tmp_path, files, quota):
    assert cgroup_cpu_quota(cgroup(tmp_path, **files)) == quota


def test_a_fractional_limit_rounds_up_and_never_exceeds_the_usable_cpus(tmp_path):
    assert available_cpus(cgroup(tmp_path, **{"cpu.max": "50000 100000"})) == 1
    big = cgroup(tmp_path / "big", **{"cpu.max": f"{(HOST + 8) * 100000} 100000"})
    assert available_cpus(big) == HOST
    assert available_cpus(cgroup(tmp_path / "none")) == HOST


def test_gunicorn_sizes_its_workers_by_the_cpus_it_may_use():
    env = {k: v for k, v in os.environ.items() if k != "WEB_WORKERS"}
    out = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "--print-config"]
        + ["config.asgi:application"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    workers = [
        line.split("=")[1].strip()
        for line in out.stdout.splitlines()
        if line.startswith("workers ")
    ]
    assert workers == [str(available_cpus())], out.stdout[-500:]
