"""How the load test paces and retries logins (loadtest/pacing.py; no locust import)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from loadtest.pacing import (
    MAX_BACKOFF,
    NGINX_LOGIN_RATE,
    LoginPacer,
    login_rate,
    parse_retry_after,
    retry_delay,
)


def test_auto_login_rate_honours_nginx_unless_logging_in_past_it():
    assert login_rate("auto", login_host="") == NGINX_LOGIN_RATE == pytest.approx(20 / 60)
    assert login_rate("auto", login_host="http://127.0.0.1:8000") == 0.0
    assert login_rate("2.5", login_host="") == 2.5
    with pytest.raises(ValueError, match="login-rate"):
        login_rate("-1", login_host="")


def test_pacer_spreads_slots_one_interval_apart():
    pacer = LoginPacer(rate=4.0)
    assert [pacer.delay(now=100.0) for _ in range(3)] == [0.0, 0.25, 0.5]
    assert pacer.delay(now=101.0) == 0.0  # a quiet spell is not saved up as a burst
    assert pacer.delay(now=101.0) == 0.25
    unpaced = LoginPacer(rate=0)
    assert [unpaced.delay(now=5.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_retry_after_is_read_as_seconds_or_a_date():
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 60 ") == 60.0
    assert parse_retry_after("Thu, 03 Dec 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 03 Dec 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_retry_delay_honours_retry_after_and_backs_off_otherwise():
    rng = random.Random(1)
    for _ in range(100):
        assert 5.0 <= retry_delay(1, 5.0, rng) <= 7.5  # never sooner than the server said
        assert 0.5 <= retry_delay(1, None, rng) <= 1.0
        assert 4.0 <= retry_delay(4, None, rng) <= 8.0
        assert retry_delay(30, None, rng) <= MAX_BACKOFF
        assert retry_delay(1, 0.0, rng) >= 0.5  # "now" is not a reason to hammer
