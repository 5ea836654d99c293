"""PgBouncer's files for one layout: where to listen, which server to reach and how many server
connections to keep, then the shared policy (pgbouncer.ini beside this file) by `%include`.

One renderer for every layout: the native stack imports it (deploy/stack/stackctl.py), the
image's `pgbouncer` role runs it (/usr/local/bin/parley-pgbouncer-config, then PgBouncer).
The clients log in with the server's own user and password (the app's DATABASE_URL with
PgBouncer's host and port), so the one credential in the Secret or .env serves both hops.

    parley-pgbouncer-config DIRECTORY    # reads PGBOUNCER_* from the environment (below)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

POLICY = Path(__file__).resolve().with_name("pgbouncer.ini")
# Where the image keeps the policy (Dockerfile); Kubernetes mounts its ConfigMap there.
IMAGE_POLICY = Path("/etc/parley/pgbouncer/pgbouncer.ini")
DEFAULT_PORT = 6432
DEFAULT_POOL_SIZE = 20
# libpq sslmode values PgBouncer's server_tls_sslmode takes as they are.
TLS_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


class ConfigError(ValueError):
    """A setting PgBouncer could not run with; the message names it."""


def _plain(value: str, what: str) -> str:
    """A value PgBouncer's ini and connection strings take unquoted."""
    if not value or any(c.isspace() or c in "\"'=;#%" for c in value):
        raise ConfigError(f"{what} {value!r} is empty or has spaces, quotes, '=', ';' or '%'")
    return value


def render(
    *,
    server_url: str,
    directory: Path,
    listen_addr: str = "*",
    listen_port: int = DEFAULT_PORT,
    pool_size: int = DEFAULT_POOL_SIZE,
    policy: Path = POLICY,
) -> Path:
    """Write DIRECTORY/pgbouncer.ini and DIRECTORY/users.txt; return the ini's path.

    PgBouncer reads both at start (before dropping root, where it starts as root)."""
    url = urlsplit(server_url)
    if url.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ConfigError(f"the server URL must be postgres://..., not {url.scheme or '?'}://")
    if pool_size < 1:
        raise ConfigError(f"the pool size must be at least 1, not {pool_size}")
    if not 0 < listen_port < 65536:
        raise ConfigError(f"the listen port must be 1-65535, not {listen_port}")
    host = _plain(url.hostname or "127.0.0.1", "the server host")
    user = unquote(url.username or "postgres")
    password = unquote(url.password or "")
    sslmode = parse_qs(url.query).get("sslmode", ["prefer" if password else "disable"])[-1]
    if sslmode not in TLS_MODES:
        raise ConfigError(f"sslmode={sslmode!r} is not one of {sorted(TLS_MODES)}")
    directory.mkdir(parents=True, exist_ok=True)
    users = directory / "users.txt"
    quoted = password.replace('"', '""')
    users.write_text(f'"{user.replace(chr(34), chr(34) * 2)}" "{quoted}"\n')
    users.chmod(0o600)
    tls = f"server_tls_sslmode = {sslmode}\n"
    if sslmode.startswith("verify"):
        tls += f"server_tls_ca_file = {SYSTEM_CA}\n"
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        # Any database name the client asks for, on the one server.
        f"* = host={host} port={url.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = {_plain(listen_addr, 'the listen address')}\n"
        f"listen_port = {listen_port}\n"
        "unix_socket_dir =\n"
        # A password in the URL: clients prove they know it (SCRAM; never sent in the clear).
        f"auth_type = {'scram-sha-256' if password else 'trust'}\n"
        f"auth_file = {users}\n"
        f"default_pool_size = {pool_size}\n"
        f"{tls}"
        f"%include {policy}\n"
    )
    return ini


def read_policy(policy: Path = POLICY) -> dict[str, str]:
    """The policy's settings (what the connection budgets check, e.g. max_client_conn)."""
    lines = policy.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith(";"))
    return {key.strip(): value.strip() for key, value in pairs}


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "") or str(default)
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def from_environment(directory: Path, env: dict[str, str]) -> Path:
    """The image role's settings: PGBOUNCER_SERVER_URL (else DATABASE_URL), PGBOUNCER_PORT,
    PGBOUNCER_POOL_SIZE, PGBOUNCER_LISTEN_ADDR, PGBOUNCER_POLICY."""
    server_url = env.get("PGBOUNCER_SERVER_URL") or env.get("DATABASE_URL") or ""
    if not server_url:
        raise ConfigError("PGBOUNCER_SERVER_URL (the Postgres server's URL) is not set")
    policy = Path(env.get("PGBOUNCER_POLICY") or IMAGE_POLICY)
    if not policy.is_file():
        raise ConfigError(f"PGBOUNCER_POLICY: no file at {policy}")
    return render(
        server_url=server_url,
        directory=directory,
        listen_addr=env.get("PGBOUNCER_LISTEN_ADDR") or "*",
        listen_port=_int(env, "PGBOUNCER_PORT", DEFAULT_PORT),
        pool_size=_int(env, "PGBOUNCER_POOL_SIZE", DEFAULT_POOL_SIZE),
        policy=policy,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    try:
        print(from_environment(Path(argv[1]), dict(os.environ)))
    except ConfigError as exc:
        print(f"pgbouncer: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
