"""The exact versions of every library whose private internals parley_runtime touches.

The tuned runtime runs only on these; with any other installed version it logs one warning
and Parley runs on the stock daphne/Channels/channels-redis/Django behaviour instead
(docs/runtime.md, "Upgrading a library"). pyproject.toml pins the same versions, and
tests/parley_runtime/test_pins.py keeps the two in step.

What each piece relies on, per library, is stated by its canary test module:
tests/parley_runtime/test_canary_<library>.py.
"""

PINS: dict[str, str] = {
    # websocket.py: daphne's WebSocketProtocol/Server (create_application, ws_factory, the
    # handshake attributes it keeps).
    "daphne": "4.2.3",
    # websocket.py: the handshake state and send queue of autobahn's protocol.
    "autobahn": "26.10.2",
    # websocket.py: HTTPChannel as the upgraded transport's producer.
    "twisted": "26.10.0",
    # routing.py (URLRouter's body), consumer.py (the dispatch loop).
    "channels": "4.3.2",
    # layers.py: _get_layer, _subscribe_to_channel and the per-channel queue.
    "channels-redis": "4.3.0",
    # http.py: ASGIHandler's request handling (its __init__ skipped).
    "django": "5.2.19",
}
