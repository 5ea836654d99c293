"""What parley_runtime.websocket relies on in autobahn 26.10.2 (pins.py). The handshake
attributes themselves: test_websocket.py reads autobahn's and daphne's source for every
method that touches them."""

from __future__ import annotations

import pytest
from autobahn.websocket.protocol import WebSocketProtocol

from tests.parley_runtime.canary import fingerprint


def test_the_send_queue_is_made_when_the_connection_is():
    # ParleyWebSocketProtocol replaces send_queue right after _connectionMade.
    assert fingerprint(WebSocketProtocol._connectionMade) == "575642b88288a04e"


def test_send_data_is_the_one_the_tuned_protocol_copies():
    # ParleyWebSocketProtocol.sendData is this, without the per-frame debug line.
    assert fingerprint(WebSocketProtocol.sendData) == "fae96de9f3677639"


def test_send_close_still_refuses_the_codes_a_server_must_send():
    # Why FixedWebSocketProtocol sends 1011/1012/1013 with sendCloseFrame: sendClose allows
    # only 1000 and 3000-4999. When this starts passing, the fix can go.
    assert fingerprint(WebSocketProtocol.sendClose) == "f9f5065931e249b6"
    protocol = WebSocketProtocol()
    protocol.state = WebSocketProtocol.STATE_OPEN
    with pytest.raises(Exception, match="invalid close code"):
        protocol.sendClose(code=1012)


def test_the_states_and_frame_call_the_fixes_use():
    assert WebSocketProtocol.STATE_CLOSING != WebSocketProtocol.STATE_CLOSED
    assert "isReply" in WebSocketProtocol.sendCloseFrame.__code__.co_varnames
