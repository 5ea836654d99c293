"""The websocket role: `python -m parley.serve_ws` runs daphne with Parley's drain on SIGTERM.

daphne's own CLI stops the reactor on SIGTERM, which drops every socket without a close code
the HTMX extension treats as "reconnect". Here SIGTERM (or SIGINT) instead:

1. turns /readyz to 503 and refuses new websocket handshakes (parley.drain),
2. after WS_DRAIN_DELAY seconds (default 0; time for a load balancer polling /readyz to
   notice), stops listening, so nginx sends reconnecting clients to another daphne,
3. closes every open socket with 1012 and waits up to CHAT_DRAIN_SECONDS for them to go,
4. exits. A second signal, or WS_DRAIN_GRACE seconds past the drain budget, exits at once.

Environment: WS_BIND (0.0.0.0), WS_PORT (8001), WS_BACKLOG (1024), WS_PING_INTERVAL (20),
WS_PING_TIMEOUT (30), WS_DRAIN_DELAY (0), WS_DRAIN_GRACE (5). Logs are JSON lines on stdout
(Django's LOGGING).
"""

from __future__ import annotations

# daphne.server installs the asyncio Twisted reactor; it must be imported before anything
# else imports Twisted.
import daphne.server  # isort: skip  # noqa: I001

import asyncio
import logging
import os
import signal
import sys
import threading
from functools import partial
from typing import Any

from daphne.ws_protocol import WebSocketProtocol
from twisted.web.http import HTTPChannel

from parley import metrics
from parley.slimqueue import SlimQueue

logger = logging.getLogger("parley.serve_ws")

# Registered close codes a server sends (RFC 6455 7.4, IANA registry) that autobahn's
# sendClose() refuses (it allows only 1000 and 3000-4999). The HTMX extension reconnects only
# after 1006, 1011, 1012 and 1013, so the app's 1012/1013 must reach the browser as sent.
SERVER_CLOSE_CODES = frozenset({1011, 1012, 1013})


# What autobahn and daphne keep on every protocol instance from the opening handshake and
# read only while connecting (connectionMade, processHandshake, succeedHandshake, daphne's
# onConnect): the raw request, its parsed headers, the response and the options that only
# the handshake reads.
# tests/parley/test_serve_ws.py finds every method that reads each of them, so an upgrade
# that starts reading one after the handshake fails there.
HANDSHAKE_ATTRIBUTES = (
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "http_response_data",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
    "clean_headers",  # daphne's; the application's scope keeps its own reference
    "_raw_query_string",
    "application_deferred",
    # Factory options autobahn copies onto every instance, read only while connecting.
    "openHandshakeTimeout",
    "tcpNoDelay",
    "versions",
    "webStatus",
    "maxConnections",
    "trustXForwardedFor",
    "allowedOrigins",
    "allowedOriginsPatterns",
    "allowNullOrigin",
    "serveFlashSocketPolicy",
    "flashSocketPolicy",
    "perMessageCompressionAccept",
)


class _OpenedRequest:
    """What daphne reads of autobahn's ConnectionRequest once the socket is open: the path
    (for log_action in onOpen, onClose and serverReject)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class _SendQueue(list):
    """autobahn's send queue (a deque, ~760 bytes even when empty, and empty almost always:
    it only holds chopped or `sync` writes) as a list: autobahn uses append, len, popleft."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class _UpgradedChannel:
    """Stands in for the HTTP channel as the transport's producer once a socket is open.

    daphne upgrades the connection from inside the HTTP request, which never finishes:
    Twisted's HTTPChannel stays the transport's registered push producer, and with it the
    request, its headers, cookies and body buffer, for the socket's lifetime. With a request
    still being handled (`_handlingRequest`) and no request producer, HTTPChannel's
    pause/resume/stopProducing do nothing; so does this, shared by every socket."""

    __slots__ = ()

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's names)
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


UPGRADED_CHANNEL = _UpgradedChannel()


class ParleyWebSocketProtocol(WebSocketProtocol):
    """daphne's websocket protocol with two fixes for how Parley closes sockets, and less
    memory kept per open socket (idle sockets are many: see HANDSHAKE_ATTRIBUTES)."""

    def _connectionMade(self) -> None:
        super()._connectionMade()
        self.send_queue = _SendQueue()

    def onOpen(self) -> None:  # noqa: N802 (daphne's name)
        super().onOpen()
        self.release_handshake()

    def release_handshake(self) -> None:
        """Drops what only the opening handshake needed (called once the socket is open)."""
        state = self.__dict__
        for name in HANDSHAKE_ATTRIBUTES:
            state.pop(name, None)
        request = state.get("request")
        if request is not None:
            self.request = _OpenedRequest(request.path)
        # A dict never shrinks when keys go; a copy is sized for what is left (100
        # attributes -> 75: 3.3 -> 1.7 KiB).
        self.__dict__ = dict(state)
        transport = self.transport
        if isinstance(getattr(transport, "producer", None), HTTPChannel) and (
            transport.producer._handlingRequest and transport.producer._requestProducer is None
        ):
            transport.producer = UPGRADED_CHANNEL

    def serverClose(self, code: int | None = None) -> None:  # noqa: N802 (daphne's name)
        # Stock daphne raises inside the application's close() for 1011/1012/1013: the
        # socket stays open and the consumer never hears of its own close (a drain would
        # hang until its deadline, then the client sees 1006 instead of 1012).
        if code in SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            super().serverClose(code)

    def serverSend(self, content: str | bytes, binary: bool = False) -> None:  # noqa: N802
        # The client has started closing (e.g. it left during a replay). daphne drops sends
        # after the disconnect; autobahn raises in this short window before it, which would
        # crash the consumer and skip its clean-up (groups, presence). Drop them too: the
        # consumer gets websocket.disconnect next.
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            return
        super().serverSend(content, binary)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        sys.exit(f"{name} must be a number of seconds, got {raw!r}")


class DrainingServer(daphne.server.Server):
    """daphne's Server, plus the listening ports (to close them) and a drain on signals."""

    def __init__(
        self, *args: Any, drain_seconds: float, drain_delay: float, grace: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, signal_handlers=False, **kwargs)
        self.ports: list[Any] = []
        self.drain_seconds = drain_seconds
        self.drain_delay = drain_delay
        self.grace = grace
        self.drain_task: asyncio.Task | None = None

    @property
    def ws_factory(self) -> Any:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: Any) -> None:
        # daphne.server.Server.run() builds the factory itself; this is where it is set.
        factory.protocol = ParleyWebSocketProtocol
        self._ws_factory = factory

    def create_application(self, protocol: Any, scope: dict) -> SlimQueue | None:
        """daphne's create_application with a bounded SlimQueue as the application's input
        queue (daphne makes an unbounded asyncio.Queue, ~2.6 KiB, for every socket it holds)."""
        assert "application_instance" not in self.connections[protocol]
        input_queue = InputQueue()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application_instance, loop=asyncio.get_event_loop()
        )
        return input_queue

    def listen_success(self, port: Any) -> None:
        self.ports.append(port)
        super().listen_success(port)

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


class InputQueue(SlimQueue):
    """What a client sent, waiting for its consumer. Bounded (CHAT_SOCKET_QUEUE_LIMIT, set in
    main()): a consumer stalled on the database no longer lets one socket queue without end.
    A page sends at most CHAT_RATE_LIMIT messages per 10 s, and a client 5x over that is
    closed (4429) as soon as the consumer reads on, so only a flood is dropped. The end of
    the socket (a disconnect) is never dropped: the consumer must hear of it."""

    __slots__ = ()

    def overflowed(self, item: dict) -> None:
        if item.get("type", "").endswith(".disconnect"):
            self._items.append(item)
            self._wake_one()
            return
        metrics.WEBSOCKET_FRAMES_DROPPED.inc()


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "parley.settings")
    from daphne.endpoints import build_endpoint_description_strings
    from django.conf import settings

    from parley.asgi import application  # sets Django up, including JSON logging

    InputQueue.maxsize = settings.CHAT_SOCKET_QUEUE_LIMIT

    host = os.environ.get("WS_BIND", "0.0.0.0")  # noqa: S104 (containers listen on all)
    port = int(os.environ.get("WS_PORT", "8001"))
    server = DrainingServer(
        application=application,
        # Twisted listens with a backlog of 50: a reconnect storm (every client of a restarted
        # pod at once) overflows it and the kernel resets handshakes it could have queued.
        endpoints=[
            f"{e}:backlog={int(os.environ.get('WS_BACKLOG', '1024'))}"
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
    logger.info("websocket server starting", extra={"bind": host, "port": port})
    server.run()
    logger.info("websocket server stopped")


if __name__ == "__main__":
    main()
