"""Parley settings: everything comes from the environment (see .env.example).

With nothing but DEBUG=1 set, Parley runs on an embedded default: SQLite and the
in-memory channel layer. Production (DEBUG off) refuses to start without a SECRET_KEY.
"""

from __future__ import annotations

import logging
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

import parley_runtime
from parley import redis_shards
from parley.logging import json_logging_config
from parley_runtime import layers as runtime_layers

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

# The tuned runtime (docs/runtime.md) or daphne/Channels/channels-redis/Django as shipped
# ("stock"). "tuned" runs stock, with one warning at startup, when a library it patches is
# not at its pinned version.
try:
    PARLEY_RUNTIME: str = parley_runtime.select(env.str("PARLEY_RUNTIME", default="tuned"))
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None

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
    "parley_runtime.apps.RuntimeConfig",  # logs which runtime runs, and why
    "chat",
]

MIDDLEWARE = [
    "parley.logging.RequestIdMiddleware",
    "parley.middleware.RequestMetricsMiddleware",
    "parley.middleware.HealthCheckMiddleware",  # before anything checks the Host header
    "parley.middleware.OverloadMiddleware",  # a view over capacity: 503, not 500
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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
        # Past capacity, degrade: a request that gets no connection within this long is
        # answered 503 with Retry-After (parley.middleware.OverloadMiddleware), well within
        # the 2 s a refusal may take.
        # No max_waiting: WEB_REQUEST_SLOTS already bounds the requests that can wait here.
        "timeout": env.float("DB_POOL_TIMEOUT", default=1.0),
    }
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The server's max_connections the connection budget was sized for (docs/kubernetes.md,
# "Connection budget"); wait_for_deps warns when the real server allows fewer. 0: not stated.
DB_MAX_CONNECTIONS: int = env.int("DB_MAX_CONNECTIONS", default=0)

# --- Channel layer ------------------------------------------------------------------------
# REDIS_URL may list several Redis servers (comma separated): channels-redis shards channels
# and groups over them. Unset, Parley runs on the in-memory layer (one process only).
REDIS_URLS: list[str] = env.list("REDIS_URL", default=[])
# A shard may be a Sentinel-managed master, `sentinel://[:password@]master-name/db`: the
# Sentinels to ask (host:port, comma separated) are these (parley.redis_shards).
REDIS_SENTINELS: list[str] = env.list("REDIS_SENTINELS", default=[])
try:
    REDIS_SHARDS = redis_shards.parse_shards(REDIS_URLS, REDIS_SENTINELS)
except redis_shards.RedisShardError as exc:
    raise ImproperlyConfigured(str(exc)) from None
# pubsub (RedisPubSubChannelLayer) by default: measured faster than core (RedisChannelLayer)
# at less CPU (loadtest/experiments/2026-11-25-channel-layer.md). Its groups live on the
# process's Redis connection, so a crashed process leaves no stale memberships.
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
                # channels-redis's pub/sub layer; tuned: a small per-channel queue.
                "BACKEND": runtime_layers.backend(PARLEY_RUNTIME),
                "CONFIG": {
                    "hosts": [shard.layer_host() for shard in REDIS_SHARDS],
                    "prefix": CHANNEL_LAYER_PREFIX,
                },
            }
        }
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [shard.layer_host() for shard in REDIS_SHARDS],
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
# Logins hash the password without holding a database connection (parley.auth).
AUTHENTICATION_BACKENDS = [
    "parley.auth.PoolFriendlyModelBackend",
    # Never reached for a password (the first one answers all of them); listed so sessions
    # logged in through it before stay valid (a session names its backend).
    "django.contrib.auth.backends.ModelBackend",
]
# Password hashes (logins, signups) one process runs at once (0: the CPUs it may use); a login
# that cannot start hashing within LOGIN_HASH_WAIT_SECONDS of its arrival gets 503.
LOGIN_HASH_CONCURRENCY: int = env.int("LOGIN_HASH_CONCURRENCY", default=0)
LOGIN_HASH_WAIT_SECONDS: float = env.float("LOGIN_HASH_WAIT_SECONDS", default=1.0)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:conversation_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Static files (whitenoise serves them with far-future caching for hashed names) -------
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

# --- Security (nginx terminates TLS and overwrites X-Forwarded-Proto) ---------------------
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

# --- Past capacity (parley.overload) ------------------------------------------------------
# Requests one process runs at once, a thread each; more wait on the event loop at most
# WEB_QUEUE_SECONDS, then get 503 with Retry-After. Health checks are never held back, and a
# login lends its slot out while it waits for or does its hash (parley.auth). Default: the
# pool's size, so a request never waits for a connection unless the database is slow. More
# slots only queue for the pool too, and every runnable request thread takes the GIL from
# the event loop, which must stay free to read the requests it refuses.
WEB_REQUEST_SLOTS: int = env.int(
    "WEB_REQUEST_SLOTS",
    default=DATABASES["default"].get("OPTIONS", {}).get("pool", {}).get("max_size", 4),
)
WEB_QUEUE_SECONDS: float = env.float("WEB_QUEUE_SECONDS", default=0.5)

# --- Chat ---------------------------------------------------------------------------------
CHAT_MAX_MESSAGE_LENGTH: int = env.int("CHAT_MAX_MESSAGE_LENGTH", default=4000)
CHAT_RATE_LIMIT: int = env.int("CHAT_RATE_LIMIT", default=30)  # messages per 10 s per socket
CHAT_HISTORY_PAGE_SIZE: int = env.int("CHAT_HISTORY_PAGE_SIZE", default=50)
# Seconds after sending during which its sender may edit a message (deleting has no window).
CHAT_EDIT_WINDOW_SECONDS: int = env.int("CHAT_EDIT_WINDOW_SECONDS", default=900)
# People one request may add to a group conversation.
CHAT_ADD_PEOPLE_LIMIT: int = env.int("CHAT_ADD_PEOPLE_LIMIT", default=20)
# Message search (/search): at most this many results, best match first (chat.selectors).
CHAT_SEARCH_RESULTS: int = env.int("CHAT_SEARCH_RESULTS", default=50)
if CHAT_SEARCH_RESULTS < 1:
    raise ImproperlyConfigured(
        f"CHAT_SEARCH_RESULTS must be at least 1 (it is {CHAT_SEARCH_RESULTS})"
    )
# The largest websocket message either side sends (bytes). daphne closes a client's larger
# one with 1009; the server cuts what it sends into messages of at most this (chat.stream).
CHAT_MAX_FRAME_BYTES: int = env.int("CHAT_MAX_FRAME_BYTES", default=65536)
# One message's frame must fit alone: each character renders to at most 6 bytes (`&quot;`),
# and the article around it, with the sender's name and the body's links (chat_links keeps
# them to 128 bytes beyond that), to less than 1 KiB.
if CHAT_MAX_MESSAGE_LENGTH * 6 + 1024 > CHAT_MAX_FRAME_BYTES:
    raise ImproperlyConfigured(
        f"CHAT_MAX_FRAME_BYTES={CHAT_MAX_FRAME_BYTES} cannot carry one message of "
        f"CHAT_MAX_MESSAGE_LENGTH={CHAT_MAX_MESSAGE_LENGTH} characters: it needs at least "
        f"{CHAT_MAX_MESSAGE_LENGTH * 6 + 1024} bytes"
    )
# A page that reconnects further behind than this many messages is told to reload instead
# of being replayed (the reload shows the newest page of history; older is a scroll away).
CHAT_CATCH_UP_MAX_MESSAGES: int = env.int("CHAT_CATCH_UP_MAX_MESSAGES", default=1000)
# Conversations a conversation list shows and follows live (the most recently active).
CHAT_INBOX_FOLLOW_LIMIT: int = env.int("CHAT_INBOX_FOLLOW_LIMIT", default=200)
# Open websockets one user may hold: in one process, and across the cluster (counted in
# Redis; without Redis only the per-process cap holds). Past either, a socket is refused
# with 4409. 0: no cap.
CHAT_MAX_SOCKETS_PER_USER_PROCESS: int = env.int("CHAT_MAX_SOCKETS_PER_USER_PROCESS", default=20)
CHAT_MAX_SOCKETS_PER_USER: int = env.int("CHAT_MAX_SOCKETS_PER_USER", default=50)
# Conversations one user may start per window (a form error and 429 past it).
CHAT_NEW_CONVERSATIONS_LIMIT: int = env.int("CHAT_NEW_CONVERSATIONS_LIMIT", default=20)
CHAT_NEW_CONVERSATIONS_WINDOW_SECONDS: int = env.int(
    "CHAT_NEW_CONVERSATIONS_WINDOW_SECONDS", default=600
)
# A draining daphne answers /readyz with 503 while it closes its sockets with 1012.
CHAT_DRAIN_SECONDS: float = env.float("CHAT_DRAIN_SECONDS", default=10.0)
# Rendered message fragments (chat.fragments.message_cache) each process keeps: stored messages
# never change. Per process on purpose: a deploy with changed templates starts empty. Bounded
# in bytes (a fragment's size is up to its sender); 32 MiB is ~30,000 typical messages and
# leaves most of a 384 MiB container limit to the sockets.
CHAT_FRAGMENT_CACHE_BYTES: int = env.int("CHAT_FRAGMENT_CACHE_BYTES", default=32 * 1024 * 1024)
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Websocket database calls and overload ------------------------------------------------
# Websocket database calls (parley.dbcalls): at most this many waiting per process, and after
# a call could not reach the database, others are refused at once for this many seconds.
CHAT_DB_MAX_PENDING: int = env.int("CHAT_DB_MAX_PENDING", default=64)
CHAT_DB_RETRY_SECONDS: float = env.float("CHAT_DB_RETRY_SECONDS", default=2.0)
# A websocket handshake that finds CHAT_DB_MAX_PENDING calls pending waits for a slot up to
# this long, in a line of at most CHAT_DB_MAX_SLOT_WAITERS, before it is refused (1013, which
# the browser retries with backoff): a reconnect storm is served in order instead of bounced.
# A waiting handshake costs no CPU; a refused one costs a whole handshake now and another
# later, so the line is long and the wait stays under daphne's 5 s handshake timeout
# (loadtest/RESULTS.md, "Reconnect storm").
CHAT_DB_CONNECT_WAIT_SECONDS: float = env.float("CHAT_DB_CONNECT_WAIT_SECONDS", default=3.0)
CHAT_DB_MAX_SLOT_WAITERS: int = env.int("CHAT_DB_MAX_SLOT_WAITERS", default=2048)
# While this many websocket handshakes are in progress, daphne stops accepting connections
# (config.serve_ws); they wait in the kernel's accept queue for free, in order. 0: never.
WS_MAX_HANDSHAKES: int = env.int("WS_MAX_HANDSHAKES", default=200)
# A handshake's reads (session, user, members, backlog) run on this many threads of their own,
# beside the one database thread: in a reconnect storm they were one Postgres round trip
# after another on that thread (three quarters of its time waiting), which bounded how fast
# sockets came back. Each thread borrows a pooled connection, so the pool keeps two more for
# that thread and /readyz (default DB_POOL_MAX_SIZE - 2; 0: reads on the one thread, as SQLite).
_pool = DATABASES["default"].get("OPTIONS", {}).get("pool")
# A send's store runs on the event loop, on up to this many connections of its own per daphne
# (parley.loopdb), not behind other work on the one database thread. They come on top of
# DB_POOL_MAX_SIZE. 0: on that thread.
CHAT_DB_STORE_CONNECTIONS: int = env.int("CHAT_DB_STORE_CONNECTIONS", default=2) if _pool else 0
# Sends to one conversation that queue while its last store runs are stored together, at most
# this many in one statement (parley.loopdb.Batches): one row lock and one commit for all of
# them. 1: each send its own statement.
CHAT_DB_STORE_BATCH: int = env.int("CHAT_DB_STORE_BATCH", default=32)
if CHAT_DB_STORE_BATCH < 1:
    raise ImproperlyConfigured(
        f"CHAT_DB_STORE_BATCH must be at least 1 (it is {CHAT_DB_STORE_BATCH})"
    )
CHAT_DB_READ_THREADS: int = env.int(
    "CHAT_DB_READ_THREADS", default=max(0, _pool["max_size"] - 2) if _pool else 0
)
if _pool and _pool["max_size"] - 2 < CHAT_DB_READ_THREADS:
    raise ImproperlyConfigured(
        f"CHAT_DB_READ_THREADS={CHAT_DB_READ_THREADS} needs DB_POOL_MAX_SIZE of at least "
        f"{CHAT_DB_READ_THREADS + 2} (it is {_pool['max_size']}): each reader thread holds a "
        "connection, and the database thread and /readyz need two more"
    )
# Past capacity a send is refused to its sender at once (parley.admission): while this
# process's event loop runs later than this (smoothed), broadcasts reach it later than this
# after their store, or calls wait longer than this for its database thread. The page keeps
# the text and retries after CHAT_OVERLOAD_RETRY_SECONDS (with backoff).
CHAT_OVERLOAD_LAG_SECONDS: float = env.float("CHAT_OVERLOAD_LAG_SECONDS", default=0.15)
CHAT_OVERLOAD_DELIVERY_SECONDS: float = env.float("CHAT_OVERLOAD_DELIVERY_SECONDS", default=0.5)
CHAT_OVERLOAD_STORE_WAIT_SECONDS: float = env.float(
    "CHAT_OVERLOAD_STORE_WAIT_SECONDS", default=0.25
)
# A send whose frame waited longer than this in its socket's queue (behind that socket's
# earlier sends) is refused too.
CHAT_OVERLOAD_QUEUE_SECONDS: float = env.float("CHAT_OVERLOAD_QUEUE_SECONDS", default=0.3)
CHAT_OVERLOAD_RETRY_SECONDS: float = env.float("CHAT_OVERLOAD_RETRY_SECONDS", default=2.0)
# Messages a socket's queues hold (the layer's broadcasts to it; its own frames to the
# consumer) when its consumer is stalled: past it, broadcasts are dropped and healed from the
# database by sequence, and frames of a client this far over its rate limit are dropped.
CHAT_SOCKET_QUEUE_LIMIT: int = env.int("CHAT_SOCKET_QUEUE_LIMIT", default=1000)

# --- Presence -----------------------------------------------------------------------------
CHAT_PRESENCE_TTL: int = env.int("CHAT_PRESENCE_TTL", default=45)
# Conversations with more members than this show no per-member presence: every connecting
# socket would be sent every online member (O(N^2) in a reconnect storm of a big room).
CHAT_PRESENCE_MAX_MEMBERS: int = env.int("CHAT_PRESENCE_MAX_MEMBERS", default=200)
# Arrivals and departures in a conversation are written and broadcast together, at most once
# per this interval per process: a reconnect storm into a big room costs O(N), not O(N^2).
CHAT_PRESENCE_COALESCE_SECONDS: float = env.float("CHAT_PRESENCE_COALESCE_SECONDS", default=0.25)

# --- Logging: one JSON object per line on stdout ------------------------------------------
LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")
# Python warnings (e.g. Django's about sync iterators under ASGI) become log records too,
# instead of bare lines on stderr.
logging.captureWarnings(True)
LOGGING = json_logging_config(
    LOG_LEVEL,
    {"django.db.backends": {"level": "INFO"}, "daphne": {"level": "INFO"}},
    # DEBUG (`make dev`): readable lines for a person at a terminal; JSON for collectors.
    human=env.bool("LOG_HUMAN", default=DEBUG),
)
