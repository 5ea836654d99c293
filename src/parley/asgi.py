"""ASGI entry point: HTTP (gunicorn + uvicorn workers) and websockets (daphne)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "parley.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from parley import metrics  # noqa: E402
from parley.drain import DrainMiddleware  # noqa: E402
from parley.logging import AccessLogMiddleware  # noqa: E402


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


application = AccessLogMiddleware(
    DrainMiddleware(
        ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                "websocket": allowed_hosts_origin_validator(
                    AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
                ),
            }
        )
    )
)
