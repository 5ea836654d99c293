"""Test environment defaults, loaded as a plugin (-p tests._env) before pytest-django reads
the settings. Real Postgres and Redis on this machine; our own Redis db index."""

import os

TEST_REDIS_DB = os.environ.get("TEST_REDIS_DB", "9")

defaults = {
    "DEBUG": "0",
    "SECRET_KEY": "test-secret-key-" + "x" * 48,
    "ALLOWED_HOSTS": "localhost,127.0.0.1,testserver",
    "CSRF_TRUSTED_ORIGINS": "http://localhost,http://127.0.0.1",
    "HTTPS": "0",
    "STATIC_MANIFEST": "0",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/parley",
    "REDIS_URL": f"redis://127.0.0.1:6379/{TEST_REDIS_DB}",
    "PASSWORD_HASHERS": "django.contrib.auth.hashers.MD5PasswordHasher",
    "LOG_LEVEL": "WARNING",
    "CHAT_PRESENCE_TTL": "6",
}
for key, value in defaults.items():
    os.environ.setdefault(key, value)
