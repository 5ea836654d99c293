"""AccessLogMiddleware: one JSON line per HTTP request and per websocket, and what its
connection-long coroutine keeps."""

from __future__ import annotations

import asyncio
import logging

import pytest

from parley.logging import AccessLogMiddleware, request_id_var


def ws_scope() -> dict:
    return {
        "type": "websocket",
        "path": "/ws/chat/1",
        "client": ["10.0.0.1", 5555],
        "headers": [(b"x-request-id", b"rid-1")],
    }


@pytest.fixture
def access_lines(caplog):
    caplog.set_level(logging.INFO, logger="parley.access")
    return caplog


async def test_a_websocket_logs_open_and_closed_with_the_clients_close_code(access_lines):
    client_closed = asyncio.Event()
    sent = []

    async def app(scope, receive, send):
        assert request_id_var.get() == "rid-1"
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"

    async def receive():
        await client_closed.wait()
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(message):
        sent.append(message)

    task = asyncio.ensure_future(AccessLogMiddleware(app)(ws_scope(), receive, send))
    while not sent:
        await asyncio.sleep(0)
    # While the socket is open, the access log's coroutine keeps no scope.
    assert "scope" not in task.get_coro().cr_frame.f_locals
    client_closed.set()
    await asyncio.wait_for(task, 5)
    opened, closed = access_lines.records
    assert opened.getMessage() == "websocket open"
    assert (opened.type, opened.path, opened.client) == ("websocket", "/ws/chat/1", "10.0.0.1:5555")
    assert closed.getMessage() == "websocket closed"
    assert (closed.status, closed.close_code, closed.path, closed.client) == (
        101,
        1001,
        "/ws/chat/1",
        "10.0.0.1:5555",
    )
    assert sent == [{"type": "websocket.accept"}]


async def test_a_websocket_the_server_closes_logs_its_code_and_a_refusal_403(access_lines):
    async def closes(scope, receive, send):
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4403})

    async def refuses(scope, receive, send):
        await send({"type": "websocket.close", "code": 1013})

    async def send(message):
        pass

    for app in (closes, refuses):
        await AccessLogMiddleware(app)(ws_scope(), None, send)
    closed = [r for r in access_lines.records if r.getMessage() == "websocket closed"]
    assert [(r.status, r.close_code) for r in closed] == [(101, 4403), (403, 1013)]


async def test_an_http_request_logs_method_path_and_status(access_lines):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204})

    async def send(message):
        pass

    scope = {"type": "http", "path": "/x", "method": "GET", "scheme": "https", "headers": []}
    await AccessLogMiddleware(app)(scope, None, send)
    (line,) = access_lines.records
    assert line.getMessage() == "GET /x 204"
    assert (line.method, line.scheme, line.status, line.client) == ("GET", "https", 204, None)
