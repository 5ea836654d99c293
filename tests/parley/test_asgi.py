"""The HTTP side of parley.asgi: request threads are reused, never shared, and the
middleware chain runs synchronously (no thread hop per middleware hook)."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.testing import ApplicationCommunicator
from django.test import override_settings

from parley.asgi import ReusedThreadASGIHandler
from tests.parley import asgi_urls
from tests.parley.asgi_urls import blocked, released

pytestmark = pytest.mark.usefixtures("own_urls")


@pytest.fixture
def own_urls():
    released.clear()
    blocked.clear()
    with override_settings(ROOT_URLCONF=asgi_urls.__name__, ALLOWED_HOSTS=["testserver"]):
        yield
    released.set()


def scope(query: str = "") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/where",
        "raw_path": b"/where",
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }


async def start(app, query: str = "") -> ApplicationCommunicator:
    comm = ApplicationCommunicator(app, scope(query))
    await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
    return comm


async def body(comm: ApplicationCommunicator) -> tuple[int, str]:
    start = await comm.receive_output(timeout=5)
    assert start["status"] == 200, start
    text = b""
    while True:
        message = await comm.receive_output(timeout=5)
        text += message.get("body", b"")
        if not message.get("more_body"):
            break
    await comm.wait(timeout=5)
    ident, name = text.decode().split()
    return int(ident), name


async def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_one_request_after_another_runs_on_the_same_request_thread():
    app = ReusedThreadASGIHandler()
    first = await body(await start(app))
    await wait_until(lambda: len(app.idle_executors) == 1)
    second = await body(await start(app))
    assert first == second
    assert first[1].startswith("django-request")


async def test_requests_at_once_get_threads_of_their_own():
    app = ReusedThreadASGIHandler()
    slow = await start(app, "block=1")
    # The first view is now holding its thread; the second must not queue behind it.
    fast = await body(await start(app))
    released.set()
    assert (await body(slow))[0] != fast[0]
    await wait_until(lambda: len(app.idle_executors) == 2)


async def test_a_request_whose_client_left_keeps_its_thread_until_its_view_is_done():
    app = ReusedThreadASGIHandler()
    left = await start(app, "block=1")
    await wait_until(blocked.is_set)  # its view holds its thread
    await left.send_input({"type": "http.disconnect"})
    # Django does not interrupt a running sync view: meanwhile another request is served,
    # on a thread of its own, which is idle again when it is done.
    other = await body(await start(app))
    await wait_until(lambda: len(app.idle_executors) == 1)
    released.set()
    await left.wait(timeout=5)
    await wait_until(lambda: len(app.idle_executors) == 2)  # both back in the pool
    assert other[1].startswith("django-request")


async def test_a_request_hops_between_the_loop_and_its_thread_only_a_few_times(monkeypatch):
    from asgiref import sync

    hops = []
    original = sync.SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counting)
    app = ReusedThreadASGIHandler()
    await body(await start(app))
    # request_started, the sync middleware chain, CSRF's process_view, the view, close:
    # no hop per middleware hook (with the chain in async mode: 15, one per hook).
    assert len(hops) <= 5, hops
    assert not [h for h in hops if "process_request" in h or "process_response" in h], hops
