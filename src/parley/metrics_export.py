"""The Prometheus exporter, apart from the metric definitions so that a gunicorn master can
serve its workers' metrics without importing Django or defining metrics of its own."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)


def multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def mark_process_dead(pid: int) -> None:
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def exposition_registry() -> CollectorRegistry:
    if multiprocess_dir() is None:
        from prometheus_client import REGISTRY

        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve(port: int | None = None, addr: str | None = None) -> bool:
    """Starts the exporter on METRICS_PORT (0 or unset: no exporter). Returns True if started."""
    port = port if port is not None else int(os.environ.get("METRICS_PORT", "0") or 0)
    if not port:
        return False
    addr = addr or os.environ.get("METRICS_ADDR", "0.0.0.0")  # noqa: S104 (internal port)
    start_http_server(port, addr=addr, registry=exposition_registry())
    logger.info("metrics exporter listening", extra={"port": port, "addr": addr})
    return True
