"""parley_runtime.routing: Channels' routers and origin check, handing over to the inner application
instead of awaiting it in a coroutine of their own (one less per layer per open socket)."""

from __future__ import annotations

import pytest
from channels import routing as channels_routing
from channels.security import websocket as channels_websocket
from django.urls import path, re_path

import parley_runtime
from chat import consumers
from parley import drain
from parley_runtime import consumer as consumer_runtime
from parley_runtime import routing

HANDED_OVER = object()


def inner(scope, receive, send):
    """An application that records its scope and returns a marker (no coroutine)."""
    inner.scope = scope
    return HANDED_OVER


async def async_inner(scope, receive, send):
    async_inner.scope = scope


def ws_scope(path_: str, **extra) -> dict:
    return {"type": "websocket", "path": path_, "headers": [], **extra}


def test_each_layer_returns_what_the_inner_application_returns():
    assert routing.ProtocolTypeRouter({"websocket": inner})(ws_scope("/"), None, None) is (
        HANDED_OVER
    )
    assert routing.OriginValidator(inner, ["*"])(ws_scope("/"), None, None) is HANDED_OVER
    router = routing.URLRouter([path("ws/x", inner)])
    assert router(ws_scope("/ws/x"), None, None) is HANDED_OVER
    assert drain.DrainMiddleware(inner)(ws_scope("/"), None, None) is HANDED_OVER


def test_as_asgi_returns_the_consumers_own_coroutine():
    """Tuned: the ASGI app of a consumer is its dispatch loop, no coroutine around it."""
    if parley_runtime.mode() != "tuned":
        pytest.skip("the tuned runtime's hand-over")
    app = consumers.ChatConsumer.as_asgi()
    assert app.consumer_class is consumers.ChatConsumer
    assert app.consumer_initkwargs == {}
    coro = app(ws_scope("/ws/chat/1"), None, None)
    try:
        assert coro.cr_code is consumer_runtime._tuned_loop.__code__
    finally:
        coro.close()


ROUTES = [
    path("ws/chat/<int:conversation_id>", async_inner),
    re_path(r"^ws/re/(?P<name>\w+)$", async_inner, {"extra": 1}),
    path("ws/inbox", async_inner),
]


@pytest.mark.parametrize(
    "scope",
    [
        ws_scope("/ws/chat/12"),
        ws_scope("/ws/re/abc"),
        ws_scope("/ws/inbox", query_string=b"since=1"),
        ws_scope("/prefix/ws/chat/3", root_path="/prefix"),
        ws_scope("/ws/chat/3", url_route={"args": (), "kwargs": {"outer": "yes"}}),
    ],
)
async def test_url_router_passes_the_same_scope_as_channels(scope):
    await channels_routing.URLRouter(ROUTES)(scope, None, None)
    theirs = async_inner.scope
    await routing.URLRouter(ROUTES)(scope, None, None)
    assert async_inner.scope == theirs
    assert "url_route" in theirs


@pytest.mark.parametrize(
    "scope", [ws_scope("/ws/nope"), ws_scope("/ws/chat/3", root_path="/other"), {"type": "x"}]
)
async def test_url_router_refuses_what_channels_refuses(scope):
    with pytest.raises(ValueError) as theirs:
        await channels_routing.URLRouter(ROUTES)(scope, None, None)
    with pytest.raises(ValueError) as ours:
        routing.URLRouter(ROUTES)(scope, None, None)
    assert str(ours.value) == str(theirs.value)


async def test_protocol_type_router_refuses_an_unknown_type_like_channels():
    with pytest.raises(ValueError) as theirs:
        await channels_routing.ProtocolTypeRouter({})({"type": "lifespan"}, None, None)
    with pytest.raises(ValueError) as ours:
        routing.ProtocolTypeRouter({})({"type": "lifespan"}, None, None)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    "origin",
    [None, b"http://good.example", b"https://good.example:8443", b"http://evil.example", b"\xff"],
)
async def test_origin_validator_lets_in_and_denies_what_channels_does(origin, monkeypatch):
    headers = [] if origin is None else [(b"origin", origin)]
    allowed = ["http://good.example", "https://good.example:8443"]
    outcomes = []

    class Denier:
        async def __call__(self, scope, receive, send):
            outcomes.append("denied")

    async def app(scope, receive, send):
        outcomes.append("in")

    monkeypatch.setattr(channels_websocket, "WebsocketDenier", Denier)
    await channels_websocket.OriginValidator(app, allowed)(ws_scope("/", headers=headers), 0, 0)
    await routing.OriginValidator(app, allowed)(ws_scope("/", headers=headers), 0, 0)
    expected = "in" if origin and b"good" in origin else "denied"
    assert outcomes == [expected, expected]
