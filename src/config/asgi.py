"""ASGI entry point: HTTP (gunicorn + uvicorn workers) and websockets (daphne)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

import parley_runtime  # noqa: E402
from parley import overload  # noqa: E402
from parley_runtime import http, layers, routing  # noqa: E402

django.setup(set_prefix=False)
# Django behind the admission gate (parley.overload): at most WEB_REQUEST_SLOTS requests run
# Django at once; the others wait on the loop at most WEB_QUEUE_SECONDS and are refused 503.
django_asgi_app = http.http_application(
    parley_runtime.mode(),
    overload.HTTPAdmission(settings.WEB_REQUEST_SLOTS, settings.WEB_QUEUE_SECONDS),
)
router = routing.for_mode(parley_runtime.mode())

from chat.routing import websocket_urlpatterns  # noqa: E402
from parley import metrics  # noqa: E402
from parley.drain import DrainMiddleware  # noqa: E402
from parley.logging import AccessLogMiddleware  # noqa: E402
from parley.ws_auth import WebsocketAuthMiddleware  # noqa: E402

# The tuned layer's per-socket broadcast queue: past the bound a stalled consumer's newest
# broadcast is dropped (and counted), then healed from the database by sequence.
layers.ChannelQueue.maxsize = settings.CHAT_SOCKET_QUEUE_LIMIT
layers.ChannelQueue.on_overflow = metrics.LAYER_MESSAGES_DROPPED.inc


class CountingOriginValidator(router.OriginValidator):
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


# On the tuned runtime only the access log (outermost: it logs when the connection ends) and
# the auth layer (it waits for the user) are coroutines of their own; the layers between them
# hand over to the next one (parley_runtime.routing), and so do the consumers' as_asgi().
application = AccessLogMiddleware(
    DrainMiddleware(
        router.ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                "websocket": allowed_hosts_origin_validator(
                    WebsocketAuthMiddleware(router.URLRouter(websocket_urlpatterns))
                ),
            }
        )
    )
)
