"""parley_runtime.http behind parley.overload.HTTPAdmission: request threads are reused,
never shared, and a request's sync part (request_started, the middleware chain, the view,
close) is one hop to its thread; past WEB_REQUEST_SLOTS requests wait on the loop, then get
503 without a thread."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.test import override_settings

from parley.overload import HTTPAdmission
from parley_runtime import http
from tests.parley_runtime import http_urls
from tests.parley_runtime.http_urls import blocked, finished, released

pytestmark = pytest.mark.usefixtures("own_urls")


@pytest.fixture
def own_urls():
    released.clear()
    blocked.clear()
    with override_settings(ROOT_URLCONF=http_urls.__name__, ALLOWED_HOSTS=["testserver"]):
        yield
    released.set()


def handler(mode: str = "tuned"):
    """The HTTP application as config.asgi makes it, on either runtime."""
    admission = HTTPAdmission(settings.WEB_REQUEST_SLOTS, settings.WEB_QUEUE_SECONDS)
    return http.http_application(mode, admission)


def scope(query: str = "", path: str = "/where") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }


async def start(app, query: str = "", path: str = "/where") -> ApplicationCommunicator:
    comm = ApplicationCommunicator(app, scope(query, path))
    await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
    return comm


async def response(comm: ApplicationCommunicator) -> tuple[int, bytes]:
    start = await comm.receive_output(timeout=5)
    text = b""
    while True:
        message = await comm.receive_output(timeout=5)
        text += message.get("body", b"")
        if not message.get("more_body"):
            break
    await comm.wait(timeout=5)
    return start["status"], text


async def body(comm: ApplicationCommunicator) -> tuple[int, str]:
    status, text = await response(comm)
    assert status == 200, (status, text)
    ident, name = text.decode().split()
    return int(ident), name


async def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_one_request_after_another_runs_on_the_same_request_thread():
    app = handler()
    first = await body(await start(app))
    await wait_until(lambda: len(app.idle_executors) == 1)
    second = await body(await start(app))
    assert first == second
    assert first[1].startswith("django-request")


async def test_requests_at_once_get_threads_of_their_own():
    app = handler()
    slow = await start(app, "block=1")
    # The first view is now holding its thread; the second must not queue behind it.
    fast = await body(await start(app))
    released.set()
    assert (await body(slow))[0] != fast[0]
    await wait_until(lambda: len(app.idle_executors) == 2)


async def test_a_request_whose_client_left_keeps_its_thread_until_its_view_is_done():
    app = handler()
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


async def test_a_request_is_one_hop_from_the_loop_to_its_thread(monkeypatch):
    from asgiref import sync

    hops = []
    original = sync.SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counting)
    app = handler()
    finished.clear()
    ident, name = await body(await start(app))
    # request_started, the whole middleware chain, the view and close: one hop (Django's
    # own handler: 5 with every middleware sync, 15 with its chain in async mode).
    assert hops == ["OneHopASGIHandler.respond"], hops
    # The request ended (request_finished: connections back to the pool) on its thread.
    assert finished == [name]


async def test_a_streaming_response_is_sent_part_by_part_and_then_closed():
    app = handler()
    finished.clear()
    status, text = await response(await start(app, path="/stream"))
    assert (status, text) == (200, b"part0 part1 part2 ")
    assert len(finished) == 1  # closed once, after the body was sent


async def test_a_view_that_raises_gets_a_500_and_the_thread_serves_the_next_request():
    app = handler()
    with override_settings(DEBUG=False):
        status, _ = await response(await start(app, path="/fail"))
    assert status == 500
    await wait_until(lambda: len(app.idle_executors) == 1)
    assert (await body(await start(app)))[1].startswith("django-request")


async def head(comm: ApplicationCommunicator) -> tuple[int, dict[bytes, bytes], bytes]:
    start = await comm.receive_output(timeout=5)
    body = await comm.receive_output(timeout=5)
    await comm.wait(timeout=5)
    return start["status"], dict(start["headers"]), body.get("body", b"")


@override_settings(WEB_REQUEST_SLOTS=1, WEB_QUEUE_SECONDS=0.2)
async def test_past_its_slots_a_request_waits_on_the_loop_then_gets_503_without_a_thread():
    app = handler()
    busy = await start(app, "block=1")
    await wait_until(blocked.is_set)
    threads_before = len(app.idle_executors)
    status, headers, text = await head(await start(app))
    assert status == 503
    assert headers[b"retry-after"].isdigit()
    assert b"busy" in text
    assert len(app.idle_executors) == threads_before  # no thread was taken for it
    released.set()
    assert (await body(busy))[1].startswith("django-request")
    # The slot is free again.
    assert (await body(await start(app)))[1].startswith("django-request")


@override_settings(WEB_REQUEST_SLOTS=1, WEB_QUEUE_SECONDS=10)
async def test_a_waiting_request_gets_the_slot_a_finished_one_frees():
    app = handler()
    busy = await start(app, "block=1")
    await wait_until(blocked.is_set)
    waiting = await start(app)
    await wait_until(lambda: app.admission.gate.waiting == 1)
    released.set()
    assert (await body(busy))[0] and (await body(waiting))[0]
    await wait_until(lambda: app.admission.gate.active == 0)


@override_settings(WEB_REQUEST_SLOTS=1, WEB_QUEUE_SECONDS=0.2)
async def test_health_checks_are_never_held_back():
    app = handler()
    busy = await start(app, "block=1")
    await wait_until(blocked.is_set)
    assert (await body(await start(app, path="/healthz")))[1].startswith("django-request")
    released.set()
    await body(busy)


@override_settings(WEB_REQUEST_SLOTS=1, WEB_QUEUE_SECONDS=0.2)
async def test_a_request_waiting_without_the_gil_lends_its_slot_out():
    """A login waiting for (or doing) its password hash does not keep pages out."""
    app = handler()
    lending = await start(app, path="/lend")
    await wait_until(blocked.is_set)
    assert (await body(await start(app)))[1].startswith("django-request")
    released.set()
    assert (await response(lending)) == (200, b"lent")
    await wait_until(lambda: app.admission.gate.active == 0)


@pytest.mark.parametrize("mode", ["tuned", "stock"])
async def test_both_runtimes_serve_a_page(mode):
    status, text = await response(await start(handler(mode)))
    assert status == 200 and text.split()[1]


@override_settings(WEB_REQUEST_SLOTS=1, WEB_QUEUE_SECONDS=0.2)
async def test_the_stock_handler_is_admitted_too():
    """Django's own ASGIHandler behind the same gate: 503 with Retry-After past its slots,
    health checks never held back, the slot free again afterwards."""
    app = handler("stock")
    assert isinstance(app, http.AdmittingHandler)
    busy = await start(app, "block=1")
    await wait_until(blocked.is_set)
    status, headers, text = await head(await start(app))
    assert status == 503 and headers[b"retry-after"].isdigit() and b"busy" in text
    status, _ = await response(await start(app, path="/healthz"))
    assert status == 200
    released.set()
    assert (await response(busy))[0] == 200
    await wait_until(lambda: app.admission.gate.active == 0)
    assert (await response(await start(app)))[0] == 200
