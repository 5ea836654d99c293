"""Test environment defaults, loaded as a plugin (-p tests._env) before pytest-django reads
the settings. Real Postgres and Redis on this machine; our own Redis db index."""

import hashlib
import os
from pathlib import Path

from tests import instance

TEST_REDIS_DB = os.environ.get("TEST_REDIS_DB", "9")
# Several checkouts may run their suites at once on one machine: each gets its own test
# database and its own Redis key prefixes.
RUN_TAG = hashlib.sha256(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()[:8]
# `make test` runs lanes (tests/lanes.py) side by side: each its own.
RUN_TAG += os.environ.get("PARLEY_TEST_LANE", "")

defaults = {
    "DEBUG": "0",
    "SECRET_KEY": "test-secret-key-" + "x" * 48,
    "ALLOWED_HOSTS": "localhost,127.0.0.1,testserver",
    "CSRF_TRUSTED_ORIGINS": "http://localhost,http://127.0.0.1",
    "HTTPS": "0",
    "STATIC_MANIFEST": "0",
    "DATABASE_URL": f"{instance.POSTGRES}/parley_{RUN_TAG}",
    "CHANNEL_LAYER_PREFIX": f"asgi{RUN_TAG}",
    "REDIS_KEY_PREFIX": f"parley{RUN_TAG}",
    "REDIS_URL": instance.redis_url(int(TEST_REDIS_DB)),
    "PASSWORD_HASHERS": "django.contrib.auth.hashers.MD5PasswordHasher",
    "LOG_LEVEL": "WARNING",
    "CHAT_PRESENCE_TTL": "6",
    # Many stacks, browsers and suites share this machine's two cores: a test about something
    # else must not be refused as "busy" because the machine is (parley/test_admission.py and
    # the benchmark use the real limits).
    "CHAT_OVERLOAD_LAG_SECONDS": "0.5",
    "CHAT_OVERLOAD_DELIVERY_SECONDS": "2",
    "CHAT_OVERLOAD_QUEUE_SECONDS": "2",
    "CHAT_OVERLOAD_STORE_WAIT_SECONDS": "2",
}
for key, value in defaults.items():
    os.environ.setdefault(key, value)
