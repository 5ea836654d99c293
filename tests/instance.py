"""Several checkouts may run the suite at once on one machine (helpers in git worktrees).
Instance 0 (the default, and CI) uses the documented fixed ports, Redis on 6379 and the plain
database and compose project names. `TEST_INSTANCE=N` moves the fixed stack ports down by
2000*N, expects its own redis-server on 6379+N (the stack tests flush whole Redis dbs) and
suffixes database and compose project names, so two suites never share anything."""

from __future__ import annotations

import os

INSTANCE = int(os.environ.get("TEST_INSTANCE", "0"))
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", str(6379 + INSTANCE)))
SUFFIX = f"_i{INSTANCE}" if INSTANCE else ""
# The Postgres server every instance shares (each its own databases), as DATABASE_URL's
# default names it.
POSTGRES = "postgres://postgres@127.0.0.1:5432"


def port(base: int) -> int:
    """A fixed test port, shifted for this instance."""
    return base - 2000 * INSTANCE


def redis_url(db: int) -> str:
    return f"redis://127.0.0.1:{REDIS_PORT}/{db}"
