"""Parley settings: everything comes from the environment (see .env.example).

With nothing but DEBUG=1 set, Parley runs on an embedded default: SQLite and the
in-memory channel layer. Production (DEBUG off) refuses to start without a SECRET_KEY.
"""

from __future__ import annotations

import logging
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from parley.logging import json_logging_config

BASE_DIR = Path(__file__).resolve().parent.parent  # src/
REPO_DIR = BASE_DIR.parent

env = environ.Env()

DEBUG: bool = env.bool("DEBUG", default=False)

SECRET_KEY: str = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production mode (DEBUG off) needs a real secret: "
            "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(50))'` "
            "and export SECRET_KEY, or set DEBUG=1 for local development."
        )
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105 (DEBUG only)
elif not DEBUG and (
    len(SECRET_KEY) < 50 or SECRET_KEY.startswith(("change-me", "django-insecure"))
):
    raise ImproperlyConfigured(
        "SECRET_KEY looks like a placeholder or is shorter than 50 characters; "
        "set a freshly generated value in production."
    )
SECRET_KEY_FALLBACKS: list[str] = env.list("SECRET_KEY_FALLBACKS", default=[])

ALLOWED_HOSTS: list[str] = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "parley.logging.RequestIdMiddleware",
    "parley.middleware.RequestMetricsMiddleware",
    "parley.middleware.HealthCheckMiddleware",  # before anything checks the Host header
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "parley.urls"
WSGI_APPLICATION = "parley.wsgi.application"
ASGI_APPLICATION = "parley.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
# Connection policy: under ASGI, Django's persistent connections (CONN_MAX_AGE > 0) are kept
# per thread, and ASGI runs sync code in ever-changing threads, so they leak. On Postgres we
# use psycopg 3's pool instead: CONN_MAX_AGE stays 0, every request or
# database_sync_to_async call borrows a connection and hands it back, and each process
# holds at most DB_POOL_MAX_SIZE connections.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=4),
        # Fail a request after this long rather than queue forever behind a dead database.
        "timeout": env.float("DB_POOL_TIMEOUT", default=10.0),
    }
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ------------------------------------------------------------------------
# REDIS_URL may list several Redis servers (comma separated): channels-redis shards channels
# and groups over them. Unset, Parley runs on the in-memory layer (one process only).
REDIS_URLS: list[str] = env.list("REDIS_URL", default=[])
# pubsub (RedisPubSubChannelLayer) by measurement: on the 2-core benchmark machine it carried
# 2,400 deliveries/s at p99 52 ms where core (RedisChannelLayer) collapsed (p99 0.9 s), at
# 60% of core's daphne CPU (loadtest/experiments/2026-11-25-channel-layer.md). Its groups live
# on the process's Redis connection, so a crashed process leaves no stale memberships.
CHANNEL_LAYER_BACKEND: str = env.str("CHANNEL_LAYER_BACKEND", default="pubsub")  # or core
# A consumer lives at most this long before it asks the client to reconnect (close 1012,
# which the HTMX extension retries, replaying what it missed). It bounds how long a member
# of a group can outlive a crashed process: group entries expire a little after it.
CHAT_SOCKET_MAX_AGE: int = env.int("CHAT_SOCKET_MAX_AGE", default=3600)
# Key prefixes, so several deployments (or test runs) can share one Redis.
CHANNEL_LAYER_PREFIX: str = env.str("CHANNEL_LAYER_PREFIX", default="asgi")
REDIS_KEY_PREFIX: str = env.str("REDIS_KEY_PREFIX", default="parley")
if REDIS_URLS:
    if CHANNEL_LAYER_BACKEND == "pubsub":
        CHANNEL_LAYERS = {
            "default": {
                # channels-redis's pub/sub layer with a small per-channel queue.
                "BACKEND": "parley.layers.PubSubChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": url} for url in REDIS_URLS],
                    "prefix": CHANNEL_LAYER_PREFIX,
                },
            }
        }
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": url} for url in REDIS_URLS],
                    "prefix": CHANNEL_LAYER_PREFIX,
                    "capacity": env.int("CHANNEL_LAYER_CAPACITY", default=1000),
                    "expiry": env.int("CHANNEL_LAYER_EXPIRY", default=60),
                    "group_expiry": CHAT_SOCKET_MAX_AGE + 300,
                },
            }
        }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth ---------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_HASHERS = env.list(
    "PASSWORD_HASHERS",
    default=[
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
        "django.contrib.auth.hashers.ScryptPasswordHasher",
    ],
)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:conversation_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Static files (whitenoise serves them with far-future caching for hashed names) --------
STATIC_URL = "/static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=REPO_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed names (cacheable for a year) need `collectstatic`; off for DEBUG and tests.
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if env.bool("STATIC_MANIFEST", default=not DEBUG)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_MAX_AGE = 31536000 if not DEBUG else 0

# --- Security (nginx terminates TLS and overwrites X-Forwarded-Proto) ----------------------
# HTTPS=1: the site is served over https (nginx, or a TLS-terminating proxy before it), so
# the session and CSRF cookies carry the Secure flag.
HTTPS: bool = env.bool("HTTPS", default=not DEBUG)
# Database sessions; the per-request read without the ORM's overhead (parley/sessions.py).
SESSION_ENGINE = "parley.sessions"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# request.is_secure() follows X-Forwarded-Proto. Safe only because of the deployment's
# contract: nginx overwrites the header on every request (this hop's scheme, or a trusted
# TLS proxy's value: deploy/nginx/parley.conf), and gunicorn and daphne are reachable from
# nginx only (loopback on the native stack, the internal compose network, NetworkPolicies
# in Kubernetes). uvicorn and daphne apply the same header to the ASGI scope (from
# FORWARDED_ALLOW_IPS, deploy/gunicorn.conf.py), so both views of the scheme agree.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = [
    # nginx redirects HTTP to HTTPS before Django sees a request.
    "security.W008",
]
if SECURE_HSTS_SECONDS == 0:
    # HSTS is nginx's (deploy/nginx/hsts/), off by default for local use; nginx also hides
    # the app's copy, so SECURE_HSTS_SECONDS only matters without nginx.
    SILENCED_SYSTEM_CHECKS.append("security.W004")

# --- Chat ---------------------------------------------------------------------------------
CHAT_MAX_MESSAGE_LENGTH: int = env.int("CHAT_MAX_MESSAGE_LENGTH", default=4000)
CHAT_RATE_LIMIT: int = env.int("CHAT_RATE_LIMIT", default=30)  # messages per 10 s per socket
CHAT_HISTORY_PAGE_SIZE: int = env.int("CHAT_HISTORY_PAGE_SIZE", default=50)
# Rendered message fragments (chat.rendering.fragments) each process keeps: stored messages
# never change. Per process on purpose: a deploy with changed templates starts empty. Bounded
# in bytes (a fragment's size is up to its sender); 32 MiB is ~30,000 typical messages and
# leaves most of a 384 MiB container limit to the sockets.
CHAT_FRAGMENT_CACHE_BYTES: int = env.int("CHAT_FRAGMENT_CACHE_BYTES", default=32 * 1024 * 1024)
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Websocket database calls (chat.dbcalls): at most this many waiting per process, and after
# a call could not reach the database, others are refused at once for this many seconds.
# The server's max_connections the connection budget was sized for (README); wait_for_deps
# warns when the real server allows fewer. 0: not stated.
DB_MAX_CONNECTIONS: int = env.int("DB_MAX_CONNECTIONS", default=0)
CHAT_DB_MAX_PENDING: int = env.int("CHAT_DB_MAX_PENDING", default=64)
CHAT_DB_RETRY_SECONDS: float = env.float("CHAT_DB_RETRY_SECONDS", default=2.0)
# Messages a socket's queues hold (the layer's broadcasts to it; its own frames to the
# consumer) when its consumer is stalled: past it, broadcasts are dropped and healed from the
# database by sequence, and frames of a client this far over its rate limit are dropped.
CHAT_SOCKET_QUEUE_LIMIT: int = env.int("CHAT_SOCKET_QUEUE_LIMIT", default=1000)
CHAT_PRESENCE_TTL: int = env.int("CHAT_PRESENCE_TTL", default=45)
# A websocket frame larger than this is refused before it is parsed (bytes).
CHAT_MAX_FRAME_BYTES: int = env.int("CHAT_MAX_FRAME_BYTES", default=65536)
# A draining daphne answers /readyz with 503 while it closes its sockets with 1012.
CHAT_DRAIN_SECONDS: float = env.float("CHAT_DRAIN_SECONDS", default=10.0)

# --- Logging: one JSON object per line on stdout ------------------------------------------
LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")
# Python warnings (e.g. Django's about sync iterators under ASGI) become log records too,
# instead of bare lines on stderr.
logging.captureWarnings(True)
LOGGING = json_logging_config(
    LOG_LEVEL,
    {"django.db.backends": {"level": "INFO"}, "daphne": {"level": "INFO"}},
)
