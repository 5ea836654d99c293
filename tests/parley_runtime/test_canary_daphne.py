"""What parley_runtime.websocket relies on in daphne 4.2.3 (pins.py). A failure here means
daphne changed under us: re-read the named code, carry the change over, then update."""

from __future__ import annotations

import inspect

import daphne.server
import daphne.ws_protocol

from tests.parley_runtime.canary import fingerprint


def test_create_application_is_the_body_tuned_server_copies():
    # TunedServer.create_application is this method with a bounded InputQueue instead of
    # an asyncio.Queue.
    assert fingerprint(daphne.server.Server.create_application) == "03800ab277876357"
    assert "asyncio.Queue()" in inspect.getsource(daphne.server.Server.create_application)


def test_run_sets_the_ws_factory_attribute_the_server_intercepts():
    # StockServer.ws_factory is a property: daphne builds the factory in run() and assigns
    # it to self.ws_factory; the setter puts our protocol class on it.
    assert fingerprint(daphne.server.Server.run) == "58098ba664254dd7"
    assert "self.ws_factory = WebSocketFactory(" in inspect.getsource(daphne.server.Server.run)


def test_the_close_and_send_methods_the_fixes_override():
    # FixedWebSocketProtocol.serverClose/serverSend fall back to these.
    assert fingerprint(daphne.ws_protocol.WebSocketProtocol.serverClose) == "2542be461440f909"
    assert fingerprint(daphne.ws_protocol.WebSocketProtocol.serverSend) == "481bc953a7ae499e"


def test_the_server_calls_the_hooks_the_drain_uses():
    # config.serve_ws: listen_success collects the ports to stop listening on a drain.
    params = inspect.signature(daphne.server.Server.__init__).parameters
    assert {"signal_handlers", "websocket_timeout", "ping_interval", "ping_timeout"} <= set(params)
    assert callable(daphne.server.Server.listen_success)
    assert callable(daphne.server.Server.handle_reply)
