"""Health endpoints of every role: /healthz (the process answers) and /readyz (it can serve;
its dependencies are reported). docs/serving.md, "Health endpoints"."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from parley import drain, metrics
from parley.perloop import per_loop

logger = logging.getLogger(__name__)


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No dependency checks."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: can this process serve? 503 only while it drains. Postgres and Redis are
    checked and reported (`degraded`, the `parley_dependency_up` gauge), but do not make it
    unready: every pod shares them, so a blip made every pod unready at once, nginx answered
    503 and no socket could reconnect, although sends are stored and confirmed with Redis
    down and pages still load from the fragment cache and the database."""
    database = _database_check()  # runs while the layer is checked: both within 2 s
    checks: dict[str, str] = {}
    try:
        async_to_sync(_layer_round_trip)()
        checks["channel_layer"] = "ok"
    except Exception as exc:
        logger.warning("readiness: channel layer down", extra={"error": repr(exc)})
        checks["channel_layer"] = f"error: {type(exc).__name__}"
    checks["database"] = _database_state(database)
    if checks["database"] != "ok":
        logger.warning("readiness: database down", extra={"error": checks["database"]})
    degraded = sorted(k for k, v in checks.items() if v != "ok")
    for dependency, state in checks.items():
        metrics.DEPENDENCY_UP.labels(dependency=dependency).set(state == "ok")
    for dependency in degraded:
        metrics.READINESS_FAILURES.labels(dependency=dependency).inc()
    draining = drain.is_draining()
    status = "draining" if draining else "degraded" if degraded else "ok"
    body = {
        "status": status,
        "ready": not draining,
        "checks": checks,
        "degraded": degraded,
        "failed": degraded,  # the name before `degraded`, kept for existing checks
    }
    return HttpResponse(
        json.dumps(body), status=503 if draining else 200, content_type="application/json"
    )


READY_CHECK_SECONDS = 2.0  # each check's bound: a probe times out after 4 s (Kubernetes)
_db_checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-db")
_db_check: Future | None = None
_db_check_lock = threading.Lock()


def _select_one() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this thread's connection goes back to the pool


def _database_check() -> Future:
    """A `SELECT 1` on its own thread. With Postgres down it waits out the pool's timeout
    (DB_POOL_TIMEOUT), which may be set longer than a probe waits; one at a time (a probe
    that comes while one is still waiting shares its answer)."""
    global _db_check
    with _db_check_lock:
        if _db_check is None or _db_check.done():
            _db_check = _db_checks.submit(_select_one)
        return _db_check


def _database_state(check: Future) -> str:
    """'ok' or why not, within READY_CHECK_SECONDS."""
    try:
        check.result(timeout=READY_CHECK_SECONDS)
    except FutureTimeout:
        return "error: timeout"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


class _Probe:
    """The readiness probe's one channel in this event loop: a channel of the pub/sub layer is
    a Redis subscription for as long as it lives (and renewed after every reconnect), so one
    per probe would pile up one per call."""

    def __init__(self) -> None:
        self.layer: object = None
        self.channel = ""
        self.lock = asyncio.Lock()


_probes = per_loop(lambda _loop: _Probe())


async def _layer_round_trip() -> None:
    layer = get_channel_layer()
    probe = _probes()
    # The default prefix matters: channels-redis pops one Redis key per prefix, and in a
    # process with open sockets another prefix would wait behind their 5 s blocking pop.
    token = uuid.uuid4().hex
    # All of it bounded: with Redis unreachable (a stopped container's address drops
    # packets) the pub/sub layer's subscribe in new_channel hung past the probe's timeout.
    async with asyncio.timeout(READY_CHECK_SECONDS), probe.lock:
        if probe.layer is not layer or not probe.channel:
            probe.layer, probe.channel = layer, await layer.new_channel()
        try:
            await layer.send(probe.channel, {"type": "readyz", "token": token})
            # An answer left behind by a probe that timed out is skipped.
            while (await layer.receive(probe.channel)).get("token") != token:
                pass
        except BaseException:
            # A cancelled receive ends the channel (the pub/sub layer unsubscribes it): the
            # next probe makes another.
            probe.channel = ""
            raise
