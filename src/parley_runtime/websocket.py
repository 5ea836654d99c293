"""daphne's websocket server, tuned: what each open socket keeps after the handshake.

- `FixedWebSocketProtocol` (both runtimes): a server-side 1011/1012/1013 close reaches the
  client (stock daphne raises on them), and a send racing the client's close is dropped;
  a client's message over the size limit is closed with 1009 (`StockServer.ws_factory`).
- `ParleyWebSocketProtocol` (tuned): after the handshake, the socket lets go of the raw
  request, its headers, handshake-only options, autobahn's send deque and Twisted's HTTP
  channel (HANDSHAKE_ATTRIBUTES, `_UpgradedChannel`); a frame is written without the debug
  line autobahn formats for each one, and at once when nothing waits before it (`sendData`,
  `write_now`).
- `TunedServer.create_application` (tuned): a bounded, two-slot InputQueue per socket
  instead of daphne's unbounded asyncio.Queue (~2.6 KiB each); each `websocket.receive`
  event comes out as daphne made it (the ASGI spec's keys and values), its arrival time
  beside it (parley_runtime.frames).

daphne's own tests for these classes run against them (tests/parley_runtime/upstream).

`server_class(mode)` gives the daphne Server subclass for a runtime mode; the project's
websocket role (config.serve_ws) adds its drain on top. Relies on
(tests/parley_runtime/test_canary_{daphne,autobahn,twisted}.py): daphne Server's
`ws_factory` attribute being set in run() and its `create_application`/`connections`;
autobahn's handshake attributes, `send_queue` and `sendData`; Twisted's TCP transport
buffers (`write_now`); HTTPChannel's `_handlingRequest` and
`_requestProducer`.
"""

from __future__ import annotations

# daphne.server installs the asyncio Twisted reactor; it must be imported before anything
# else imports Twisted.
import daphne.server  # isort: skip  # noqa: I001

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from autobahn.websocket.protocol import WebSocketServerProtocol
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.web.http import HTTPChannel

from parley_runtime.frames import stamped
from parley_runtime.slimqueue import SlimQueue

# Registered close codes a server sends (RFC 6455 7.4, IANA registry) that autobahn's
# sendClose() refuses (it allows only 1000 and 3000-4999). The HTMX extension reconnects only
# after 1006, 1011, 1012 and 1013, so the app's 1012/1013 must reach the browser as sent.
SERVER_CLOSE_CODES = frozenset({1011, 1012, 1013})


# What autobahn and daphne keep on every protocol instance from the opening handshake and
# read only while connecting (connectionMade, processHandshake, succeedHandshake, daphne's
# onConnect): the raw request, its parsed headers, the response and the options that only
# the handshake reads.
# tests/parley_runtime/test_websocket.py finds every method that reads each of them, so an upgrade
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
    # (autobahn's factory options are not copied onto the tuned protocol at all: see
    # ParleyWebSocketProtocol.)
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


class FixedWebSocketProtocol(WebSocketProtocol):
    """daphne's websocket protocol with two fixes for how Parley closes sockets: on both
    runtimes, since without them a server-side 1012 (drain, socket lifetime) never reaches
    the client."""

    # Sockets past the HTTP upgrade whose websocket handshake has not finished (opened or
    # gone), in this process: what a reconnect storm has in progress (config.serve_ws stops
    # accepting connections while there are too many).
    handshaking = 0

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's name)
        FixedWebSocketProtocol.handshaking += 1
        self._handshaking = True
        super().connectionMade()

    def _handshake_over(self) -> None:
        if self.__dict__.pop("_handshaking", False):
            FixedWebSocketProtocol.handshaking -= 1

    def onOpen(self) -> None:  # noqa: N802 (daphne's name)
        self._handshake_over()
        super().onOpen()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 (Twisted's name)
        self._handshake_over()
        super().connectionLost(reason)

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


def write_now(transport: Any, data: bytes) -> None:
    """transport.write(data), sent at once when nothing is waiting to be sent before it.

    Twisted's write only buffers and registers the socket with the event loop: the bytes go
    in a later turn of the loop, after every callback already due (a fan-out to 500 sockets
    waited for each of them), each write paying two selector registrations and a callback.
    Like asyncio's own transports, a plain TCP connection with an empty buffer is written
    to directly; what the kernel does not take (or any other transport, TLS, a closing one)
    goes through transport.write, in order behind it."""
    if (
        type(transport) is tcp.Server
        and transport.connected
        and not (transport.disconnecting or transport._writeDisconnected or transport.TLS)
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)  # also when sending failed: Twisted finds the lost connection


class _FactoryOption:
    """A factory option read through the factory instead of copied onto every socket."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, protocol: Any, owner: type | None = None) -> Any:
        if protocol is None:
            return self
        return getattr(protocol.factory, self.name)


class ParleyWebSocketProtocol(FixedWebSocketProtocol):
    """The tuned protocol: less memory kept per open socket (idle sockets are many: see
    HANDSHAKE_ATTRIBUTES), less work per handshake.

    autobahn's _connectionMade copies every factory option (CONFIG_ATTRS, ~40) onto the new
    socket and pretty-prints them all for a debug line whether or not debug is logged: a
    seventh of a daphne's CPU in a reconnect storm. Here CONFIG_ATTRS is empty and each
    option is read from the factory (daphne sets them once, before it listens); an option
    the protocol sets on itself (trackTimings) still lands on the instance.
    """

    CONFIG_ATTRS = ()
    locals().update({name: _FactoryOption(name) for name in WebSocketServerProtocol.CONFIG_ATTRS})

    def _connectionMade(self) -> None:
        super()._connectionMade()
        self.send_queue = _SendQueue()

    def sendData(  # noqa: N802 (autobahn's name)
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """autobahn's sendData without the debug line it builds for every frame it writes
        (three colour-highlighted strings made whether or not debug is logged; docs/runtime.md
        has its cost), and written at once (write_now). Chopped, `sync` and queued writes are
        autobahn's own path."""
        if chopsize or sync or self.send_queue:
            super().sendData(data, sync, chopsize)
            return
        write_now(self.transport, data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)

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


class StockServer(daphne.server.Server):
    """daphne's Server with FixedWebSocketProtocol (daphne builds its websocket factory in
    run(): the protocol class is set as the factory is)."""

    protocol_class: type[WebSocketProtocol] = FixedWebSocketProtocol

    @property
    def ws_factory(self) -> Any:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: Any) -> None:
        factory.protocol = self.protocol_class
        # A client's message over the size limit is answered with a close frame, 1009
        # (message too big), instead of autobahn's default of dropping the TCP connection,
        # which the client sees as 1006 and retries as if the server had failed.
        factory.setProtocolOptions(failByDrop=False)
        self._ws_factory = factory


class TunedServer(StockServer):
    protocol_class = ParleyWebSocketProtocol

    def create_application(self, protocol: Any, scope: dict) -> SlimQueue | None:
        """daphne's create_application with a bounded InputQueue as the application's input
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


def server_class(mode: str) -> type[StockServer]:
    return TunedServer if mode == "tuned" else StockServer


class InputQueue(SlimQueue):
    """What a client sent, waiting for its consumer. Bounded (`maxsize`, which the project
    sets): a consumer stalled on the database no longer lets one socket queue without end;
    past it a frame is dropped and `on_overflow` called. The end of the socket (a
    disconnect) is never dropped: the consumer must hear of it. Events come out with the
    keys and values they went in with; a `websocket.receive` also carries when it arrived
    (parley_runtime.frames.received_at)."""

    __slots__ = ()
    maxsize = 1000
    on_overflow: Callable[[], None] = staticmethod(lambda: None)

    def put_nowait(self, item: dict) -> None:
        if item.get("type") == "websocket.receive":
            # When the frame reached the process, outside the event (its keys stay the ASGI
            # spec's): the project refuses a send that waited here too long instead of
            # storing it late. parley_runtime.frames.received_at() reads it.
            item = stamped(item)
        super().put_nowait(item)

    def overflowed(self, item: dict) -> None:
        if item.get("type", "").endswith(".disconnect"):
            self._items.append(item)
            self._wake_one()
            return
        InputQueue.on_overflow()
