"""chat.sockets: a websocket path no consumer serves is refused, not an application error."""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import sync_to_async

import config.asgi  # noqa: F401  (its setup configures logging: before caplog, not during a test)
from tests.factories import communicator, make_user, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "path", ["/ws/chat/None", "/ws/chat/1/extra", "/ws/nope", "/ws/chat/-1", "/ws/"]
)
async def test_an_unknown_websocket_path_is_refused_with_4404_and_logs_no_error(path, caplog):
    cookie = await sync_to_async(lambda: session_cookie(make_user()))()
    caplog.set_level(logging.INFO)
    comm = communicator(path, cookie)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4404}
    await comm.wait(timeout=5)  # the app ended on its own
    refusals = [r for r in caplog.records if r.getMessage() == "websocket refused"]
    assert [(r.code, r.reason, r.path) for r in refusals] == [(4404, "not_found", path)]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
