"""Prometheus metrics.

gunicorn workers and daphne processes are separate processes, so metrics use
prometheus-client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (each process
writes its own files; one exporter per host or container sums them). The exporter listens on
METRICS_PORT, an internal port that nginx never proxies (parley.metrics_export).
"""

from __future__ import annotations

import os

# Every process that imports this (servers, migrate, manage commands) writes its own files in
# multiprocess mode; the directory must exist before the first metric is defined.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

WEBSOCKETS_OPEN = Gauge(
    "parley_websockets_open",
    "Open websockets in this process",
    ["kind"],
    multiprocess_mode="livesum",
)
CONVERSATIONS_ACTIVE = Gauge(
    "parley_conversations_active",
    "Conversations with at least one open socket in this process (their hubs)",
    multiprocess_mode="livesum",
)
WEBSOCKET_CONNECTS = Counter("parley_websocket_connects_total", "Websockets accepted", ["kind"])
WEBSOCKET_ACCEPT_PAUSES = Counter(
    "parley_websocket_accept_pauses_total",
    "Times a websocket process stopped accepting connections while WS_MAX_HANDSHAKES "
    "handshakes were in progress (a reconnect storm's backpressure)",
)
WEBSOCKET_REFUSALS = Counter(
    "parley_websocket_refusals_total",
    "Websockets refused or closed by policy, by reason",
    ["reason"],  # unauthenticated, forbidden, not_found, origin, rate_limit, draining
)
MESSAGES_STORED = Counter("parley_messages_stored_total", "Chat messages stored")
STORE_BATCH_SIZE = Histogram(
    "parley_store_batch_size",
    "Sends stored by one statement on the event loop's store connections",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BROADCAST_SECONDS = Histogram(
    "parley_broadcast_seconds",
    "From the message being stored to group_send returning",
    buckets=LATENCY_BUCKETS,
)
BROADCAST_FAILURES = Counter(
    "parley_broadcast_failures_total", "group_send calls that failed (layer down)"
)
DELIVERIES = Counter(
    "parley_deliveries_total", "Messages sent to sockets (live, healed and replayed)"
)
REPLAYS = Counter("parley_replays_total", "Reconnects served a backlog (?after=)")
MESSAGES_REPLAYED = Counter("parley_messages_replayed_total", "Messages sent from backlogs")
BACKLOG_READS = Counter(
    "parley_backlog_reads_total",
    "Database reads for sockets catching up (a socket only a little behind is served from "
    "its conversation hub's recent frames instead)",
)
GAPS_DETECTED = Counter(
    "parley_sequence_gaps_total",
    "Sequence gaps noticed by conversation hubs (a broadcast the layer dropped or delayed)",
    ["how"],  # live (a later message revealed it), tail (heartbeat), recovery (layer back)
)
HEAL_READS = Counter(
    "parley_heal_reads_total",
    "Database reads by conversation hubs to fill sequence gaps (one per gap per process, "
    "whatever the room's size)",
    ["how"],
)
PRESENCE_BROADCASTS = Counter(
    "parley_presence_broadcasts_total",
    "Presence changes broadcast (coalesced: at most one per conversation per process per "
    "CHAT_PRESENCE_COALESCE_SECONDS, none when nobody's presence changed)",
)
GAP_MESSAGES_HEALED = Counter(
    "parley_gap_messages_healed_total", "Messages sent from the database to fill gaps"
)
MESSAGES_REFUSED = Counter(
    "parley_messages_refused_total",
    "Sends refused to their sender because the process was past capacity (the page retries)",
    # queued (its frame waited too long), lag (event loop late), delivery_delay (broadcasts
    # arrive late), store_wait (database thread queue), db_busy (too many calls waiting)
    ["reason"],
)
EVENT_LOOP_LAG = Gauge(
    "parley_event_loop_lag_seconds",
    "How late this process's event loop runs (smoothed); sends are refused past "
    "CHAT_OVERLOAD_LAG_SECONDS",
    multiprocess_mode="livemax",
)
RATE_LIMITED = Counter("parley_rate_limited_total", "Sends refused by the per-socket rate limit")
HTTP_REQUEST_SECONDS = Histogram(
    "parley_http_request_duration_seconds",
    "HTTP request latency by route",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REFUSALS = Counter(
    "parley_http_refusals_total",
    "HTTP requests answered 503 (Retry-After) because the process was over capacity, by reason",
    ["reason"],  # queue_timeout (no request slot), pool_timeout (no connection), hashing_busy
)
READINESS_FAILURES = Counter(
    "parley_readiness_failures_total", "Failed /readyz checks by dependency", ["dependency"]
)
DEPENDENCY_UP = Gauge(
    "parley_dependency_up",
    "1 if this process's last /readyz reached the dependency (database, channel_layer)",
    ["dependency"],
    multiprocess_mode="livemin",  # any live process that cannot reach it shows 0
)
DB_CALLS_REFUSED = Counter(
    "parley_db_calls_refused_total",
    "Websocket database calls refused at once, by reason",
    ["reason"],  # down (a recent call could not reach it), busy (too many waiting)
)
LAYER_MESSAGES_DROPPED = Counter(
    "parley_layer_messages_dropped_total",
    "Channel-layer messages dropped at a full per-socket queue (the consumer heals from the DB)",
)
WEBSOCKET_FRAMES_DROPPED = Counter(
    "parley_websocket_frames_dropped_total",
    "Client frames dropped at a full per-socket input queue (a flooding client, stalled consumer)",
)
HISTORY_RESETS = Counter(
    "parley_history_resets_total",
    "Conversations whose sockets in a process started over: the database's history is not "
    "the one they had (a restore)",
)
PAGE_RELOADS = Counter(
    "parley_page_reloads_total",
    "Connecting pages told to reload instead of replaying: restored (another epoch), behind "
    "(past CHAT_CATCH_UP_MAX_MESSAGES), ahead (claims more than the server holds)",
    ["reason"],
)
