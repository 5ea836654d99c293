"""parley_runtime.websocket: what an open socket's protocol lets go of after the handshake, and the
daphne/autobahn/Twisted behaviour that relies on (so an upgrade that changes it fails here)."""

from __future__ import annotations

import ast
import inspect
from unittest import mock

import autobahn.twisted.websocket
import autobahn.websocket.protocol
import daphne.ws_protocol
from twisted.web.http import HTTPChannel

from parley_runtime import websocket as serve_ws
from parley_runtime.websocket import (
    HANDSHAKE_ATTRIBUTES,
    UPGRADED_CHANNEL,
    ParleyWebSocketProtocol,
)

# The methods of a server-side protocol that run before the socket is open.
HANDSHAKE_METHODS = {
    "WebSocketProtocol.__init__",
    "WebSocketProtocol._connectionMade",
    "WebSocketAdapterProtocol.connectionMade",
    "WebSocketServerProtocol.processHandshake",
    "WebSocketServerProtocol.succeedHandshake",
    "WebSocketProtocol.onConnect",  # daphne's
}
PROTOCOL_MODULES = (
    autobahn.websocket.protocol,
    autobahn.twisted.websocket,
    daphne.ws_protocol,
)


def _self_reads(modules, names) -> dict[str, set[str]]:
    """For each attribute name, every `Class.method` of the server-side protocol classes in
    `modules` that mentions `self.<name>`."""
    found: dict[str, set[str]] = {name: set() for name in names}
    for cls, fn in _protocol_methods(modules):
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in found
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                found[node.attr].add(f"{cls.name}.{fn.name}")
    return found


def _protocol_methods(modules):
    """(class, method) AST nodes of the server-side protocol classes in `modules`."""
    for module in modules:
        tree = ast.parse(inspect.getsource(module))
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            if "Client" in cls.name or "Factory" in cls.name:
                continue
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield cls, fn


def test_handshake_attributes_are_read_only_while_connecting():
    reads = _self_reads(PROTOCOL_MODULES, HANDSHAKE_ATTRIBUTES)
    late = {name: where - HANDSHAKE_METHODS for name, where in reads.items()}
    assert not any(late.values()), f"read after the handshake: {late}"
    # ...and each is still there to drop (a renamed one would silently stay): read while
    # connecting.
    assert [n for n, where in reads.items() if not where] == []


def test_no_protocol_method_reads_a_dropped_attribute_by_name():
    """The check above sees `self.name`; getattr(self, ...) would escape it. The only one
    with a computed name is autobahn's copy of the factory options, while connecting."""
    by_name, computed = set(), set()
    for cls, fn in _protocol_methods(PROTOCOL_MODULES):
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr", "vars")
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "self"
            ):
                name = node.args[1] if len(node.args) > 1 else None
                if isinstance(name, ast.Constant):
                    by_name.add(name.value)
                else:
                    computed.add(f"{cls.name}.{fn.name}")
    assert not by_name & set(HANDSHAKE_ATTRIBUTES)
    assert computed == {"WebSocketProtocol._connectionMade"}


def test_daphne_reads_only_the_path_of_the_request_once_open():
    tree = ast.parse(inspect.getsource(daphne.ws_protocol.WebSocketProtocol))
    reads = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name != "onConnect":
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "request"
                ):
                    reads.add(node.attr)
    assert reads == {"path"}


def test_autobahn_uses_only_append_len_and_popleft_of_the_send_queue():
    source = inspect.getsource(autobahn.websocket.protocol)
    uses = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "send_queue"
        ):
            uses.add(node.attr)
    assert uses == {"append", "popleft"}
    queue = serve_ws._SendQueue()
    queue.append((b"a", True))
    queue.append((b"b", False))
    assert (len(queue), queue.popleft(), len(queue)) == (2, (b"a", True), 1)


def test_an_upgraded_http_channel_does_nothing_as_a_producer():
    """daphne's HTTP request never finishes after an upgrade: the channel is handling it and
    has no request producer, so pausing, resuming and stopping it reach nothing."""
    channel = HTTPChannel()
    channel._networkProducer = network = mock.Mock()
    channel._handlingRequest = True
    assert channel._requestProducer is None
    channel.pauseProducing()
    channel.resumeProducing()
    channel.stopProducing()
    assert network.mock_calls == []
    UPGRADED_CHANNEL.pauseProducing()
    UPGRADED_CHANNEL.resumeProducing()
    UPGRADED_CHANNEL.stopProducing()


def _opened_protocol() -> tuple[ParleyWebSocketProtocol, HTTPChannel]:
    protocol = ParleyWebSocketProtocol()
    for name in HANDSHAKE_ATTRIBUTES:
        setattr(protocol, name, object())
    protocol.request = mock.Mock(path="/ws/chat/1", headers={"cookie": "x"})
    channel = HTTPChannel()
    channel._handlingRequest = True
    protocol.transport = mock.Mock(producer=channel)
    protocol.state = protocol.STATE_OPEN
    return protocol, channel


def test_release_handshake_drops_the_handshake_and_the_http_channel():
    protocol, _ = _opened_protocol()
    before = len(vars(protocol))
    protocol.release_handshake()
    assert not [name for name in HANDSHAKE_ATTRIBUTES if hasattr(protocol, name)]
    assert protocol.request.path == "/ws/chat/1"
    assert not hasattr(protocol.request, "headers")
    assert protocol.transport.producer is UPGRADED_CHANNEL
    assert protocol.state == protocol.STATE_OPEN
    assert len(vars(protocol)) == before - len(HANDSHAKE_ATTRIBUTES)


def test_release_handshake_keeps_a_producer_that_still_does_something():
    protocol, channel = _opened_protocol()
    channel._handlingRequest = False  # a finished request: pausing would pause the socket
    protocol.release_handshake()
    assert protocol.transport.producer is channel


def test_the_protocol_releases_the_handshake_when_it_opens():
    protocol = ParleyWebSocketProtocol()
    with (
        mock.patch.object(daphne.ws_protocol.WebSocketProtocol, "onOpen") as daphne_on_open,
        mock.patch.object(ParleyWebSocketProtocol, "release_handshake") as release,
    ):
        protocol.onOpen()
    daphne_on_open.assert_called_once_with()
    release.assert_called_once_with()


def test_a_socket_reads_the_factory_options_instead_of_copying_them():
    """autobahn copied ~40 factory options onto every socket and pretty-printed them for a
    debug line per connection; the tuned protocol reads them from the factory."""
    from autobahn.twisted.websocket import WebSocketServerFactory
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    factory = WebSocketServerFactory()
    factory.protocol = ParleyWebSocketProtocol
    factory.setProtocolOptions(openHandshakeTimeout=7, autoPingInterval=3)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    with mock.patch.object(autobahn.websocket.protocol, "pformat") as pformat:
        protocol.makeConnection(StringTransport())
    assert protocol.state == protocol.STATE_CONNECTING
    assert (protocol.openHandshakeTimeout, protocol.autoPingInterval) == (7, 3)
    options = set(autobahn.websocket.protocol.WebSocketServerProtocol.CONFIG_ATTRS)
    assert options & set(vars(protocol)) <= {"trackTimings"}  # set by the protocol itself
    assert all(call.args == ([],) for call in pformat.call_args_list)
    factory.setProtocolOptions(autoPingInterval=5)  # read live, not a copy
    assert protocol.autoPingInterval == 5


def test_handshakes_in_progress_are_counted_until_open_or_gone():
    """What config.serve_ws paces accepts by: upgraded sockets whose handshake has not
    finished, each counted once however it ends."""
    from autobahn.twisted.websocket import WebSocketServerFactory
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    factory = WebSocketServerFactory()
    factory.protocol = ParleyWebSocketProtocol
    before = ParleyWebSocketProtocol.handshaking
    opened, lost = (
        factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port)) for port in (40001, 40002)
    )
    for protocol in (opened, lost):
        protocol.makeConnection(StringTransport())
    assert ParleyWebSocketProtocol.handshaking == before + 2
    with mock.patch.object(daphne.ws_protocol.WebSocketProtocol, "onOpen"):
        opened.onOpen()
    assert ParleyWebSocketProtocol.handshaking == before + 1
    with mock.patch.object(daphne.ws_protocol.WebSocketProtocol, "connectionLost"):
        lost.connectionLost(None)
        lost.connectionLost(None)  # twice: still counted once
        opened.connectionLost(None)  # gone after it opened: already counted out
    assert ParleyWebSocketProtocol.handshaking == before


def _open_server_protocol(protocol_class):
    from autobahn.twisted.websocket import WebSocketServerFactory
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    factory = WebSocketServerFactory()
    factory.protocol = protocol_class
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40003))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.state = protocol.STATE_OPEN  # as after a handshake (no extension negotiated)
    protocol.websocket_version = 13
    protocol._perMessageCompress = None
    transport.clear()
    return protocol, transport


def test_a_frame_is_written_as_autobahn_writes_it_without_formatting_a_debug_line():
    """The tuned protocol's sendData: the same bytes on the wire and the same traffic counts
    as autobahn's, without building the three highlighted strings of autobahn's per-frame
    debug line."""
    stock, stock_wire = _open_server_protocol(autobahn.twisted.websocket.WebSocketServerProtocol)
    tuned, tuned_wire = _open_server_protocol(ParleyWebSocketProtocol)
    frames = [(b"<p>hi</p>", False), (("é" * 70_000).encode(), False), (b"\x00\x01", True)]
    for protocol in (stock, tuned):
        with mock.patch.object(
            autobahn.websocket.protocol, "hltype", wraps=autobahn.websocket.protocol.hltype
        ) as hltype:
            for payload, binary in frames:
                protocol.sendMessage(payload, isBinary=binary)
        protocol.highlighted = hltype.call_count
    assert tuned_wire.value() == stock_wire.value() and len(tuned_wire.value()) > 140_000
    assert (
        tuned.trafficStats.outgoingOctetsWireLevel
        == stock.trafficStats.outgoingOctetsWireLevel
        == len(stock_wire.value())
    )
    assert stock.highlighted == 3 and tuned.highlighted == 0


def test_queued_and_chopped_writes_keep_autobahns_order():
    tuned, wire = _open_server_protocol(ParleyWebSocketProtocol)
    with mock.patch.object(autobahn.websocket.protocol.WebSocketProtocol, "_trigger"):
        tuned.sendData(b"first", sync=True)  # queued: waits for the reactor
        tuned.sendData(b"second")  # behind it, not before
    assert wire.value() == b"" and list(tuned.send_queue) == [(b"first", True), (b"second", False)]
    tuned.send_queue.clear()
    with mock.patch.object(autobahn.websocket.protocol.WebSocketProtocol, "_trigger"):
        tuned.sendData(b"abcdef", chopsize=4)
    assert list(tuned.send_queue) == [(b"abcd", True), (b"ef", True)]


def _socket_pair_transport():
    """A tuned protocol, open, on Twisted's real TCP transport over a socket pair; the other
    end, non-blocking, to read what reached the kernel."""
    import socket

    from twisted.internet import reactor, tcp

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    protocol, _ = _open_server_protocol(ParleyWebSocketProtocol)
    transport = tcp.Server(ours, protocol, ("127.0.0.1", 40004), mock.Mock(), 1, reactor)
    transport.stopReading()  # nothing here runs the reactor; the test plays it
    protocol.transport = transport
    return protocol, transport, theirs


def _read_all(sock) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_a_frame_reaches_the_kernel_at_once_without_waiting_for_the_event_loop():
    protocol, transport, peer = _socket_pair_transport()
    try:
        with mock.patch.object(transport, "startWriting") as start_writing:
            protocol.sendMessage(b"<p>now</p>")
        assert _read_all(peer) == b"\x81\x0a<p>now</p>"  # a text frame, unmasked, as sent
        start_writing.assert_not_called()  # no selector registration, no later callback
        assert protocol.trafficStats.outgoingOctetsWireLevel == 12
    finally:
        transport.socket.close()
        peer.close()


def test_what_the_kernel_does_not_take_is_buffered_and_later_frames_queue_behind_it():
    protocol, transport, peer = _socket_pair_transport()
    try:
        big = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers hold
        with mock.patch.object(transport, "startWriting") as start_writing:
            protocol.sendMessage(big, isBinary=True)
            protocol.sendMessage(b"after", isBinary=True)
        assert start_writing.called and transport._tempDataLen > 0  # the rest waits in order
        received = b""
        while transport._tempDataLen or transport.offset < len(transport.dataBuffer):
            received += _read_all(peer)
            assert transport.doWrite() is None  # what the reactor does once writable
        received += _read_all(peer)
        header = b"\x82\x7f" + len(big).to_bytes(8, "big")
        assert received == header + big + b"\x82\x05after"
    finally:
        transport.socket.close()
        peer.close()


def test_a_lost_connection_is_left_to_twisted_to_find():
    protocol, transport, peer = _socket_pair_transport()
    peer.close()
    try:
        with mock.patch.object(transport, "startWriting") as start_writing:
            protocol.sendMessage(b"x")  # no exception here: Twisted's write path takes it
        assert start_writing.called
        assert transport.doWrite() is not None  # the reactor's next write reports it lost
    finally:
        transport.socket.close()


def test_a_transport_that_is_not_plain_tcp_gets_twisteds_write():
    protocol, transport = _open_server_protocol(ParleyWebSocketProtocol)  # StringTransport
    with mock.patch.object(transport, "write", wraps=transport.write) as write:
        protocol.sendMessage(b"x")
    write.assert_called_once_with(b"\x81\x01x")
