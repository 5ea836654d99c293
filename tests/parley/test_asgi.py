"""The HTTP side of parley.asgi: request threads are reused, never shared, and the
middleware chain runs synchronously (no thread hop per middleware hook)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.testing import ApplicationCommunicator
from django.http import HttpResponse
from django.test import override_settings
from django.urls import path

from parley.asgi import ReusedThreadASGIHandler

released = threading.Event()


def where(request):
    """The thread this request's view ran on."""
    if request.GET.get("block"):
        released.wait(timeout=10)
    return HttpResponse(f"{threading.get_ident()} {threading.current_thread().name}")


urlpatterns = [path("where", where)]
pytestmark = pytest.mark.usefixtures("own_urls")


@pytest.fixture
def own_urls():
    released.clear()
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"]):
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


async def test_a_thread_still_running_an_abandoned_view_is_not_reused_until_it_is_done():
    app = ReusedThreadASGIHandler()
    abandoned = await start(app, "block=1")
    await asyncio.sleep(0)  # let the view start
    await abandoned.send_input({"type": "http.disconnect"})
    await abandoned.wait(timeout=5)  # Django gave up on it; its view still runs
    assert app.idle_executors == []
    next_one = await body(await start(app))
    assert len(app.idle_executors) <= 1  # only the next request's thread, once done
    released.set()
    await wait_until(lambda: len(app.idle_executors) == 2)
    assert next_one[1].startswith("django-request")


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
