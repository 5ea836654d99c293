"""ASGI entry point: HTTP (gunicorn + uvicorn workers) and websockets (daphne)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "parley.settings")

import asyncio  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import django  # noqa: E402
from asgiref.sync import ThreadSensitiveContext, sync_to_async  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.core.handlers.base import BaseHandler  # noqa: E402
from django.http import FileResponse, HttpResponseBase  # noqa: E402
from django.urls import set_script_prefix  # noqa: E402


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
    may queue behind that.

    A client that leaves mid-view: the sync view runs to its end either way (Django does not
    interrupt one either); its response is then dropped by the server.
    """

    max_idle_executors = 32

    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.idle_executors: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = (
            self.idle_executors.pop()
            if self.idle_executors
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-request")
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            loop = asyncio.get_running_loop()
            executor.submit(int).add_done_callback(
                lambda _: loop.call_soon_threadsafe(self._idle, executor)
            )

    def _idle(self, executor: ThreadPoolExecutor) -> None:
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


django.setup(set_prefix=False)
django_asgi_app = OneHopASGIHandler()

from django.conf import settings  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from parley import metrics  # noqa: E402
from parley.drain import DrainMiddleware  # noqa: E402
from parley.logging import AccessLogMiddleware  # noqa: E402
from parley.routing import OriginValidator, ProtocolTypeRouter, URLRouter  # noqa: E402
from parley.ws_auth import WebsocketAuthMiddleware  # noqa: E402


class CountingOriginValidator(OriginValidator):
    """AllowedHostsOriginValidator that counts what it refuses."""

    def valid_origin(self, parsed_origin) -> bool:
        ok = super().valid_origin(parsed_origin)
        if not ok:
            metrics.WEBSOCKET_REFUSALS.labels(reason="origin").inc()
        return ok


def allowed_hosts_origin_validator(app):
    # Same rule as channels' AllowedHostsOriginValidator: ALLOWED_HOSTS, plus localhost in DEBUG.
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    return CountingOriginValidator(app, allowed)


# Only the access log (outermost: it logs when the connection ends) and the auth layer (it
# waits for the user) are coroutines of their own; the layers between them hand over to the
# next one (parley.routing), and so do the consumers' as_asgi() (chat.consumers).
application = AccessLogMiddleware(
    DrainMiddleware(
        ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                "websocket": allowed_hosts_origin_validator(
                    WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns))
                ),
            }
        )
    )
)
