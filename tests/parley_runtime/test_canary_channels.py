"""What parley_runtime.routing and parley_runtime.consumer rely on in Channels 4.3.2
(pins.py). test_routing.py also compares the routers' results with Channels' own."""

from __future__ import annotations

import inspect

from channels import routing
from channels.consumer import AsyncConsumer
from channels.security import websocket
from channels.utils import await_many_dispatch

from tests.parley_runtime.canary import fingerprint


def test_the_router_bodies_the_tuned_routers_copy():
    assert fingerprint(routing.URLRouter.__call__) == "542c1c0948f5532f"
    assert fingerprint(routing.ProtocolTypeRouter.__call__) == "140564c0303e412a"
    assert fingerprint(websocket.OriginValidator.__call__) == "9ac24cd6fd0e9832"


def test_the_dispatch_loop_the_tuned_loop_replaces():
    # parley_runtime.consumer: _tuned_loop is await_many_dispatch with one future per wake,
    # reached from AsyncConsumer.__call__'s place; the stock path calls it as is.
    assert fingerprint(await_many_dispatch) == "52f54ae4b489092b"
    assert list(inspect.signature(await_many_dispatch).parameters) == [
        "consumer_callables",
        "dispatch",
    ]
    assert fingerprint(AsyncConsumer.__call__) == "32d2f5bc5a608d46"
