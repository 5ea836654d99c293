"""How many CPUs this process may use: the container's CPU limit, not the host's core count.

`os.cpu_count()` in a container is the host's: on a 16-core node a web container limited to
one CPU started 16 gunicorn workers, each with its own database pool (16 x 4 connections, and
more per replica than Postgres's default max_connections of 100 allows for the deployment).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (cgroup v2 cpu.max, or v1's CFS quota), or None when
    unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP) -> int:
    """Whole CPUs to size process counts by: the cgroup quota rounded up (0.5 -> 1), at most
    the CPUs this process may run on, at least 1."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        usable = min(usable, math.ceil(quota))
    return max(usable, 1)
