"""Container HEALTHCHECK: GET /readyz on the server this container runs.

The role is read from PID 1's command line (the entrypoint execs the server, so PID 1 is
gunicorn or parley.serve_ws, or docker-init with one of them as its child). One-shot roles
(migrate, manage) have nothing to probe and report healthy. The Host header is one of
ALLOWED_HOSTS, since Django refuses any other.
"""

from __future__ import annotations

import http.client
import os
import sys
from pathlib import Path


def cmdlines() -> list[str]:
    """Command lines of every process we can see (PID 1 may be docker-init)."""
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return lines


def target_port() -> int | None:
    procs = " ".join(cmdlines())
    if "gunicorn" in procs:
        return int(os.environ.get("WEB_BIND", "0.0.0.0:8000").rsplit(":", 1)[1])
    if "parley.serve_ws" in procs:
        return int(os.environ.get("WS_PORT", "8001"))
    return None


def host_header() -> str:
    for host in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = host.strip()
        if host and host != "*":
            return host.lstrip(".")
    return "localhost"


def main() -> int:
    port = target_port()
    if port is None:
        return 0
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
