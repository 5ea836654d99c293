from __future__ import annotations

import contextlib
import os

import pytest
import redis


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis_db():
    """Our own Redis db index: start from empty, leave it empty."""
    urls = [u for u in os.environ.get("REDIS_URL", "").split(",") if u]
    for url in urls:
        redis.Redis.from_url(url).flushdb()
    yield
    for url in urls:
        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis.Redis.from_url(url).flushdb()
