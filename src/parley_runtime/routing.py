"""Channels' routers and origin check, each handing over to the next application instead of
awaiting it.

An ASGI layer written as `async def __call__(...): ... return await inner(...)` stays a
suspended coroutine, with its locals, for as long as the connection is open; for a websocket
that is its whole life, and an idle socket's memory is what bounds how many one process
holds. These do the same checks and the same scope changes as Channels' ProtocolTypeRouter,
OriginValidator and URLRouter (whose matching they reuse), then *return* the inner
application's awaitable, so only the layers that must act after the inner application
(the access log) or wait for something first (auth) are left on the stack.

Each must sit inside an ordinary coroutine function (Parley's access log middleware):
servers that look for one (uvicorn) still find it, and what these raise is still raised
inside that coroutine, as it was from the coroutines they replace.

Stock: Channels' own classes (`for_mode("stock")`). Relies on
(tests/parley_runtime/test_canary_channels.py): URLRouter's `routes` with `pattern.match`
and `default_args`, ProtocolTypeRouter's `application_mapping`, OriginValidator's
`application` and `valid_origin`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

from channels import routing as channels_routing
from channels.security import websocket as channels_websocket
from django.urls.exceptions import Resolver404


class ProtocolTypeRouter(channels_routing.ProtocolTypeRouter):
    def __call__(self, scope: dict, receive: Any, send: Any) -> Awaitable[Any]:  # type: ignore[override]
        if scope["type"] in self.application_mapping:
            return self.application_mapping[scope["type"]](scope, receive, send)
        raise ValueError(f"No application configured for scope type {scope['type']!r}")


class OriginValidator(channels_websocket.OriginValidator):
    def __call__(self, scope: dict, receive: Any, send: Any) -> Awaitable[Any]:  # type: ignore[override]
        if scope["type"] != "websocket":
            raise ValueError("You cannot use OriginValidator on a non-WebSocket connection")
        parsed_origin = None
        for header_name, header_value in scope.get("headers", []):
            if header_name == b"origin":
                with contextlib.suppress(UnicodeDecodeError):
                    parsed_origin = urlparse(header_value.decode("latin1"))
        if self.valid_origin(parsed_origin):
            return self.application(scope, receive, send)
        return channels_websocket.WebsocketDenier()(scope, receive, send)


class URLRouter(channels_routing.URLRouter):
    def __call__(self, scope: dict, receive: Any, send: Any) -> Awaitable[Any]:  # type: ignore[override]
        path = scope.get("path_remaining", scope.get("path"))
        if path is None:
            raise ValueError("No 'path' key in connection scope, cannot route URLs")
        if "path_remaining" not in scope:
            # The outermost URLRouter: handle root_path if present.
            root_path = scope.get("root_path", "")
            if root_path and not path.startswith(root_path):
                raise ValueError(f"No route found for path {path!r}.")
            path = path[len(root_path) :]
        path = path.lstrip("/")  # Django's handling
        for route in self.routes:
            try:
                match = route.pattern.match(path)
                if match:
                    new_path, args, kwargs = match
                    kwargs.update(route.default_args)
                    outer = scope.get("url_route", {})
                    return route.callback(
                        dict(
                            scope,
                            path_remaining=new_path,
                            url_route={
                                "args": outer.get("args", ()) + args,
                                "kwargs": {**outer.get("kwargs", {}), **kwargs},
                            },
                        ),
                        receive,
                        send,
                    )
            except Resolver404:  # from a nested router
                pass
        if "path_remaining" in scope:
            raise Resolver404(f"No route found for path {path!r}.")
        raise ValueError(f"No route found for path {path!r}.")


def for_mode(mode: str) -> SimpleNamespace:
    """ProtocolTypeRouter, OriginValidator and URLRouter for a runtime mode."""
    if mode == "tuned":
        return SimpleNamespace(
            ProtocolTypeRouter=ProtocolTypeRouter,
            OriginValidator=OriginValidator,
            URLRouter=URLRouter,
        )
    return SimpleNamespace(
        ProtocolTypeRouter=channels_routing.ProtocolTypeRouter,
        OriginValidator=channels_websocket.OriginValidator,
        URLRouter=channels_routing.URLRouter,
    )
