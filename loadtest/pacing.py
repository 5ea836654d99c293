"""How logins are paced and retried (no locust import: unit-tested on its own).

Logins are the expensive part of a run's start (a password hash each): a hundred at once
queue in the web workers until some time out (HTTP 500 or 503). So the master lets at most
`--login-concurrency` login attempts run at once, starting them at most `--login-rate` per
second, and a user refused with 429 or 503 (or unreachable) waits and tries again, as a
person would, within bounds.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from datetime import UTC, datetime

# nginx allows 20 login POSTs a minute per client address (deploy/nginx/parley.conf,
# zone parley_auth): logging in through it, pace to that.
NGINX_LOGIN_RATE = 20 / 60
# Logins in flight at once: `make stack` has two web workers, and each hashes one password
# at a time, so two keep both busy without a queue in front of them.
LOGIN_CONCURRENCY = 2

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # 0: no answer (connection error, timeout)
LOGIN_ATTEMPTS = 8
CONNECT_ATTEMPTS = 5
MAX_BACKOFF = 16.0


def login_rate(value: str, login_host: str) -> float:
    """The `--login-rate` knob: login attempts started per second over the whole run, 0 for
    no limit (then only --login-concurrency paces them), or `auto`: nginx's credential-path
    limit when logging in through --host, no limit with a --login-host."""
    if value.strip().lower() == "auto":
        return 0.0 if login_host else NGINX_LOGIN_RATE
    rate = float(value)
    if rate < 0 or not math.isfinite(rate):
        raise ValueError(f"--login-rate must be `auto`, 0 or a positive number, not {value!r}")
    return rate


class LoginPacer:
    """Hands out login start times `1 / rate` apart (the master's, in its own clock)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = -math.inf

    def delay(self, now: float | None = None) -> float:
        """Seconds from `now` until the next free slot, which is then taken."""
        now = time.monotonic() if now is None else now
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_delay(attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """How long to wait after failed attempt `attempt` (1-based): at least the server's
    Retry-After (spread over up to half as long again, so users told the same figure do
    not all come back at once), else exponential backoff from 1 s with jitter."""
    uniform = (rng or random).uniform
    if retry_after is not None:
        return max(retry_after, 0.5) * uniform(1.0, 1.5)
    return min(2.0 ** (attempt - 1), MAX_BACKOFF) * uniform(0.5, 1.0)
