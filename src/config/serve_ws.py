"""The websocket role: `python -m config.serve_ws` runs daphne with Parley's drain on SIGTERM.

daphne's own CLI stops the reactor on SIGTERM, which drops every socket without a close code
the HTMX extension treats as "reconnect". Here SIGTERM (or SIGINT) instead:

1. turns /readyz to 503 and refuses new websocket handshakes (parley.drain),
2. after WS_DRAIN_DELAY seconds (default 0; time for a load balancer polling /readyz to
   notice), stops listening, so nginx sends reconnecting clients to another daphne,
3. closes every open socket with 1012 and waits up to CHAT_DRAIN_SECONDS for them to go,
4. exits. A second signal, or WS_DRAIN_GRACE seconds past the drain budget, exits at once.

Environment: WS_BIND (0.0.0.0), WS_PORT (8001), WS_BACKLOG (4096), WS_PING_INTERVAL (20),
WS_PING_TIMEOUT (30), WS_DRAIN_DELAY (0), WS_DRAIN_GRACE (5). Logs are JSON lines on stdout
(Django's LOGGING).
"""

from __future__ import annotations

# parley_runtime.websocket imports daphne.server, which installs the asyncio Twisted reactor:
# first, before anything else imports Twisted.
from parley_runtime import websocket  # isort: skip  # noqa: I001

import asyncio
import logging
import os
import signal
import sys
import threading
from typing import Any

import parley_runtime
from parley import metrics

logger = logging.getLogger("config.serve_ws")


def drain_started() -> bool:
    from parley import drain

    return drain.is_draining()


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        sys.exit(f"{name} must be a number of seconds, got {raw!r}")


class Draining:
    """Mixed into the runtime's daphne Server: the listening ports (to close them) and a
    drain on signals."""

    def __init__(
        self, *args: Any, drain_seconds: float, drain_delay: float, grace: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, signal_handlers=False, **kwargs)
        self.ports: list[Any] = []
        self.drain_seconds = drain_seconds
        self.drain_delay = drain_delay
        self.grace = grace
        self.drain_task: asyncio.Task | None = None
        self.accept_paused = False
        self.pacing: asyncio.Task | None = None

    def listen_success(self, port: Any) -> None:
        self.ports.append(port)
        super().listen_success(port)

    def start_pacing(self) -> None:
        """Called once the reactor runs (its asyncio loop is then the current one)."""
        self.pacing = asyncio.get_event_loop().create_task(self.pace_accepts())  # kept: weak

    async def pace_accepts(self) -> None:
        """Backpressure in a reconnect storm: while WS_MAX_HANDSHAKES websocket handshakes
        are in progress, stop accepting connections; resume once a quarter of them are left.
        New ones wait in the kernel's accept queue (WS_BACKLOG) at no cost, and are taken in
        order, instead of each costing a handshake here only to be refused, or to run past
        daphne's 5 s handshake timeout, and come back later (5,000 sockets back after a
        kill: 16,000 refusals without this)."""
        from django.conf import settings

        limit = settings.WS_MAX_HANDSHAKES
        if limit <= 0:
            return
        # Until the drain, which stops listening itself (connections still in the accept
        # queue are then reset, and nginx takes them to another daphne).
        while not drain_started():
            handshaking = websocket.FixedWebSocketProtocol.handshaking
            if not self.accept_paused and handshaking >= limit:
                self.set_accepting(False)
            elif self.accept_paused and handshaking <= limit // 4:
                self.set_accepting(True)
            await asyncio.sleep(0.02)

    def set_accepting(self, accepting: bool) -> None:
        for port in self.ports:
            if not port.disconnected:
                if accepting:
                    port.startReading()
                else:
                    port.stopReading()
        self.accept_paused = not accepting
        if not accepting:
            metrics.WEBSOCKET_ACCEPT_PAUSES.inc()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_event_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def on_signal(self, sig: int) -> None:
        if self.drain_task is not None:
            logger.warning("second signal during drain; exiting now", extra={"signal": sig})
            os._exit(1)
        logger.info("signal received; draining", extra={"signal": signal.Signals(sig).name})
        # A thread, not the event loop: it must also fire if the loop has stopped but the
        # interpreter hangs on exit (e.g. joining a worker thread stuck on the database).
        budget = self.drain_delay + self.drain_seconds + self.grace
        watchdog = threading.Timer(budget, self.force_exit, args=(budget,))
        watchdog.daemon = True
        watchdog.start()
        self.drain_task = asyncio.get_event_loop().create_task(self.drain())

    def force_exit(self, deadline: float) -> None:
        logger.error("drain overran its budget; exiting", extra={"budget_s": deadline})
        logging.shutdown()
        os._exit(1)

    async def drain(self) -> None:
        from parley import drain

        drain.mark_draining()  # /readyz 503 and no new sockets, from this moment
        try:
            if self.drain_delay > 0:
                await asyncio.sleep(self.drain_delay)
            for port in self.ports:
                port.stopListening()
            logger.info("stopped listening", extra={"open_sockets": drain.open_socket_count()})
            left = await drain.begin_drain(grace=self.drain_seconds)
            if left:
                logger.warning(
                    "sockets still open at the drain deadline", extra={"still_open": left}
                )
        finally:
            self.stop()


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from daphne.endpoints import build_endpoint_description_strings
    from django.conf import settings

    from config.asgi import application  # sets Django up, including JSON logging

    websocket.InputQueue.maxsize = settings.CHAT_SOCKET_QUEUE_LIMIT
    websocket.InputQueue.on_overflow = metrics.WEBSOCKET_FRAMES_DROPPED.inc
    server_class = type(
        "DrainingServer", (Draining, websocket.server_class(parley_runtime.mode())), {}
    )

    host = os.environ.get("WS_BIND", "0.0.0.0")  # noqa: S104 (containers listen on all)
    port = int(os.environ.get("WS_PORT", "8001"))
    server = server_class(
        application=application,
        # Twisted listens with a backlog of 50: a reconnect storm (every client of a restarted
        # pod at once) overflows it and the kernel resets handshakes it could have queued.
        endpoints=[
            f"{e}:backlog={int(os.environ.get('WS_BACKLOG', '4096'))}"
            for e in build_endpoint_description_strings(host=host, port=port)
        ],
        # Access lines come from parley.logging.AccessLogMiddleware (with the request id).
        action_logger=None,
        # The app closes sockets itself (1012 at CHAT_SOCKET_MAX_AGE, which the client
        # retries); daphne's own timeout would close with 1000, which it never retries.
        websocket_timeout=-1,
        ping_interval=_env_float("WS_PING_INTERVAL", 20.0),
        ping_timeout=_env_float("WS_PING_TIMEOUT", 30.0),
        websocket_max_message_size=settings.CHAT_MAX_FRAME_BYTES,
        websocket_max_frame_size=settings.CHAT_MAX_FRAME_BYTES,
        # nginx overwrites these; daphne is only reachable through it.
        proxy_forwarded_address_header="X-Forwarded-For",
        proxy_forwarded_proto_header="X-Forwarded-Proto",
        drain_seconds=settings.CHAT_DRAIN_SECONDS,
        drain_delay=_env_float("WS_DRAIN_DELAY", 0.0),
        grace=_env_float("WS_DRAIN_GRACE", 5.0),
        ready_callable=None,
    )
    from twisted.internet import reactor

    from parley.metrics_export import serve as serve_metrics

    serve_metrics()  # METRICS_PORT unset: another process on this host exports the shared dir
    from parley.gc_heap import freeze_startup_heap

    freeze_startup_heap("ws")
    reactor.callWhenRunning(server.install_signal_handlers)
    reactor.callWhenRunning(server.start_pacing)
    logger.info("websocket server starting", extra={"bind": host, "port": port})
    server.run()
    logger.info("websocket server stopped")


if __name__ == "__main__":
    main()
