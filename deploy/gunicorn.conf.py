"""gunicorn config for the web role: `gunicorn -c deploy/gunicorn.conf.py config.asgi:application`.

Everything tunable comes from the environment (docs/serving.md "Production serving"). Works from any
working directory: it chdirs to the repository root and puts src/ on the path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from uvicorn_worker import UvicornWorker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # for the log formatter below, before Django loads
chdir = str(ROOT)
pythonpath = str(ROOT / "src")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from parley.cpus import available_cpus  # noqa: E402  (src/ is on the path now)
from parley.logging import json_logging_config  # noqa: E402


class ParleyWorker(UvicornWorker):
    # Django has no lifespan handler (uvicorn would log that on every start), and access
    # lines come from parley.logging.AccessLogMiddleware, which knows the request id.
    # uvloop and httptools by name, not "auto": a missing one fails the start instead of
    # quietly costing ~8% more CPU per page on asyncio's loop and h11.
    CONFIG_KWARGS = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "off",
        "access_log": False,
    }


bind = [os.environ.get("WEB_BIND", "0.0.0.0:8000")]
worker_class = ParleyWorker
# An async worker uses one core well; one per core is the starting point, not 2n+1. Cores are
# the container's CPU limit (compose `cpus:`, Kubernetes limits.cpu), not the host's count:
# each worker holds up to DB_POOL_MAX_SIZE database connections.
workers = int(os.environ.get("WEB_WORKERS") or available_cpus())
# A worker that does not heartbeat for this long is killed and replaced.
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
# On SIGTERM, in-flight requests get this long to finish.
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT", "30"))
# Longer than nginx's upstream keepalive_timeout (60 s): nginx closes idle connections first,
# so it never sends a request on a connection gunicorn is just closing.
keepalive = int(os.environ.get("WEB_KEEPALIVE", "75"))
# X-Forwarded-For/-Proto are honoured only from these addresses (nginx); uvicorn then sets
# the request's client address and scheme, which Django uses.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# The heartbeat file lives in memory: a slow disk must not look like a hung worker.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
# gunicorn >= 25 opens a control socket under $HOME by default; several gunicorns on one
# machine (or a read-only home) would collide on it.
control_socket_disable = True

accesslog = None
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
logconfig_dict = json_logging_config(
    loglevel,
    {
        "gunicorn.error": {"handlers": ["stdout"], "level": loglevel.upper(), "propagate": False},
        "gunicorn.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
    },
)


def post_worker_init(worker) -> None:
    # The app is loaded: keep its objects out of every later full collection (parley.gc_heap).
    from parley.gc_heap import freeze_startup_heap

    freeze_startup_heap("web")


# --- Prometheus (multiprocess: every worker writes to PROMETHEUS_MULTIPROC_DIR) -------------
def when_ready(server) -> None:
    # The master serves the summed metrics of all workers on METRICS_PORT (internal only).
    from parley.metrics_export import serve

    serve()


def child_exit(server, worker) -> None:
    # A dead worker's live gauges (open sockets) must stop counting.
    from parley.metrics_export import mark_process_dead

    mark_process_dead(worker.pid)
