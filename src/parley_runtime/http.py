"""Django's ASGI handler with one thread hop per request (tuned), or Django's own (stock);
either behind the project's admission (`Admission`: at most N requests run Django at once,
the rest wait on the loop and are refused 503 past a bound).

Relies on (tests/parley_runtime/test_canary_django.py): ASGIHandler's read_body,
create_request, send_response and chunk_size, BaseHandler.__init__/load_middleware/
get_response, and that ASGIHandler.__init__ does nothing else it needs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix


class Admission(Protocol):
    async def admit(self, scope: dict, send: Any) -> bool:
        """True: run the request, then leave(). False: it was answered (refused) already."""

    def leave(self, scope: dict) -> None:
        """The request's thread is free."""


def http_application(mode: str, admission: Admission) -> Any:
    """The ASGI application for HTTP: Django behind `admission`, on the runtime `mode`."""
    if mode == "tuned":
        return OneHopASGIHandler(admission)
    return AdmittingHandler(ASGIHandler(), admission)


class AdmittingHandler:
    """Stock: Django's ASGIHandler, admitted first; the slot is freed when it returns."""

    def __init__(self, inner: ASGIHandler, admission: Admission) -> None:
        self.inner = inner
        self.admission = admission

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        if not await self.admission.admit(scope, send):
            return None
        try:
            return await self.inner(scope, receive, send)
        finally:
            self.admission.leave(scope)


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler for a project whose middleware and views are all sync.

    Django's own handler runs the middleware chain in async mode and hops between the event
    loop and the request's thread for request_started, the chain, the view and close (five
    hops when every middleware is sync), and races two tasks per request to notice a client
    that leaves. Here the loop reads the body, then one hop to the request's thread runs
    request_started, the sync middleware chain, the view and, for a complete response,
    close() (request_finished: the database connection goes back to the pool); the loop then
    writes the response. A streaming response is iterated and closed as Django does.

    Request threads are reused: a new single-thread executor per request (Django's default)
    starts a thread, and yet another to join it. A finished request's executor (one thread,
    one request at a time) serves a later request instead, once everything queued on it
    has run: a request whose client left can still be running its view, and nothing else
    may queue behind that. The admission slot is freed at that moment too.

    A client that leaves mid-view: the sync view runs to its end either way (Django does not
    interrupt one either); its response is then dropped by the server.
    """

    max_idle_executors = 32

    def __init__(self, admission: Admission) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.idle_executors: list[ThreadPoolExecutor] = []
        self.admission = admission

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if not await self.admission.admit(scope, send):
            return
        executor = (
            self.idle_executors.pop()
            if self.idle_executors
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-request")
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # The slot is free once the thread is: after everything queued on it has run.
            loop = asyncio.get_running_loop()
            executor.submit(int).add_done_callback(
                lambda _: loop.call_soon_threadsafe(self._idle, executor, scope)
            )

    def _idle(self, executor: ThreadPoolExecutor, scope: dict) -> None:
        self.admission.leave(scope)
        if len(self.idle_executors) < self.max_idle_executors:
            self.idle_executors.append(executor)
        else:
            executor.shutdown(wait=False)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            response = await sync_to_async(self.respond, thread_sensitive=True)(scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if response.streaming:
                    await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()

    def respond(self, scope, body_file) -> HttpResponseBase:
        """The request's whole sync part, on its thread."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size  # the server chunks the body
        if not response.streaming:
            response.close()  # the body is in memory; request_finished runs here
        return response
