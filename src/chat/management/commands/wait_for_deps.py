"""Waits until Postgres and Redis answer, so a process started before them neither crashes in
a loop nor hangs silently.

    manage.py wait_for_deps [--timeout SECONDS]   (default: WAIT_FOR_DEPS_TIMEOUT or 60)

Logs one line per failed attempt (which dependency, why, how long is left) and exits 1 with
a clear message once the timeout passes.
"""

from __future__ import annotations

import logging
import os
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from parley.redis_shards import RedisShard

logger = logging.getLogger("parley.wait_for_deps")


def check_database(alias: str = "default") -> str:
    """Opens a fresh connection (not the pool, which would wait its own timeout) and runs a
    query. Returns a short description of what was checked."""
    conn = connections[alias]
    params = conn.get_connection_params()
    params.pop("pool", None)
    params.setdefault("connect_timeout", 3)
    if conn.vendor == "postgresql":
        import psycopg

        with psycopg.connect(**params) as raw, raw.cursor() as cursor:
            cursor.execute("SHOW max_connections")
            allowed = int(cursor.fetchone()[0])
        budget = settings.DB_MAX_CONNECTIONS
        if budget and allowed < budget:
            logger.warning(
                "the database allows %d connections, but this deployment's connection budget "
                "was sized for DB_MAX_CONNECTIONS=%d (docs/kubernetes.md, Connection budget): "
                "at full scale logins will fail with 'too many clients'",
                allowed,
                budget,
                extra={"dependency": "database"},
            )
        return f"postgres {params.get('host', '')}:{params.get('port', '')}/{params.get('dbname')}"
    conn.ensure_connection()
    conn.close()
    return conn.vendor


def check_redis(shard: RedisShard) -> str:
    client = shard.sync_client(socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    finally:
        client.close()
    return shard.label  # never a password


class Command(BaseCommand):
    help = "Wait for the database and Redis to accept connections (retries with a log line)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=float(os.environ.get("WAIT_FOR_DEPS_TIMEOUT", "60")),
            help="give up after this many seconds (default: WAIT_FOR_DEPS_TIMEOUT or 60)",
        )

    def handle(self, *args, timeout: float, **options) -> None:
        checks = [("database", check_database)]
        checks += [
            (f"redis[{i}]", lambda s=shard: check_redis(s))
            for i, shard in enumerate(settings.REDIS_SHARDS)
        ]
        deadline = time.monotonic() + timeout
        for name, check in checks:
            attempt, delay = 0, 0.5
            while True:
                attempt += 1
                try:
                    what = check()
                except Exception as exc:  # any failure to connect is "not yet"
                    reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise CommandError(
                            f"{name} still unavailable after {timeout:g}s "
                            f"({attempt} attempts): {reason}"
                        ) from exc
                    logger.warning(
                        "waiting for %s (attempt %d): %s; retrying in %.1fs, %.0fs left",
                        name,
                        attempt,
                        reason,
                        delay,
                        left,
                        extra={"dependency": name, "attempt": attempt},
                    )
                    time.sleep(min(delay, max(left, 0.1)))
                    delay = min(delay * 2, 5.0)
                    continue
                logger.info("%s is up: %s", name, what, extra={"dependency": name})
                break
