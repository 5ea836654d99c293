"""ASGI entry point: HTTP (gunicorn + uvicorn workers) and websockets (daphne)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "parley.settings")

import asyncio  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import django  # noqa: E402
from asgiref.sync import ThreadSensitiveContext  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402


class ReusedThreadASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the request threads kept for the next request.

    Django runs each request's sync code on a thread of its own: a new single-thread
    executor per request, whose thread starts, and is then joined by yet another new thread.
    Here a finished request's executor (still one thread, one request at a time) serves a
    later request instead, once everything queued on it has run: a request whose client
    left can still be running its view, and nothing else may queue behind that.
    """

    max_idle_executors = 32

    def __init__(self) -> None:
        super().__init__()
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


django.setup(set_prefix=False)
django_asgi_app = ReusedThreadASGIHandler()

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
