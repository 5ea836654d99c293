"""Container HEALTHCHECK: GET /readyz on the server this container runs.

The role is read from the processes' command lines: docker-init (compose `init: true`)
keeps `parley-entrypoint <role>` as PID 1's; without it the entrypoint's shell shows the role
until it execs gunicorn or config.serve_ws. A web or ws container is unhealthy until its
server answers, including while it still waits for Postgres and Redis. One-shot roles
(migrate, manage) have nothing to probe and report healthy. The Host header is one of
ALLOWED_HOSTS, since Django refuses any other. A pgbouncer container is healthy once a
`SELECT 1` through it reaches the server, with the server's own credentials.
"""

from __future__ import annotations

import http.client
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

WAITING = -1  # web/ws role whose server has not started yet
PGBOUNCER = -2  # the pgbouncer role: probed with a query, not over HTTP


def cmdlines() -> list[str]:
    """Command lines of every process we can see."""
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return lines


def target_port(procs: str, env: dict[str, str]) -> int | None:
    """The port to probe, WAITING, or None for a one-shot role."""
    if "gunicorn" in procs or "parley-entrypoint web" in procs:
        return int(env.get("WEB_BIND", "0.0.0.0:8000").rsplit(":", 1)[1])
    if "config.serve_ws" in procs or "parley-entrypoint ws" in procs:
        return int(env.get("WS_PORT", "8001"))
    if "parley-entrypoint pgbouncer" in procs or "pgbouncer/pgbouncer.ini" in procs:
        return PGBOUNCER
    if "wait_for_deps" in procs:  # the default command (web) before its server starts
        return WAITING
    return None


def host_header() -> str:
    for host in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = host.strip()
        if host and host != "*":
            return host.lstrip(".")
    return "localhost"


def pgbouncer_answers(env: dict[str, str]) -> int:
    import psycopg  # here: the web and ws probes need not load it

    server = urlsplit(env.get("PGBOUNCER_SERVER_URL") or env.get("DATABASE_URL", ""))
    login = server.netloc.rpartition("@")[0]
    local = f"{login}@" if login else ""
    through = server._replace(netloc=f"{local}127.0.0.1:{env.get('PGBOUNCER_PORT') or 6432}")
    try:
        # sslmode is the server hop's; the local hop is plain.
        with psycopg.connect(through._replace(query="").geturl(), connect_timeout=4) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        print(f"pgbouncer: SELECT 1 failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    env = dict(os.environ)
    port = target_port(" ".join(cmdlines()), env)
    if port is None:
        return 0
    if port == PGBOUNCER:
        return pgbouncer_answers(env)
    if port == WAITING:
        print("still waiting for Postgres and Redis", file=sys.stderr)
        return 1
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
    try:
        conn.request("GET", "/readyz", headers={"Host": host_header()})
        response = conn.getresponse()
        body = response.read(300).decode(errors="replace")
    except OSError as exc:
        print(f"readyz on :{port} unreachable: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if response.status != 200:
        print(f"readyz on :{port} answered {response.status}: {body}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
