"""ASGI entry point: HTTP (gunicorn + uvicorn workers) and websockets (daphne)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "parley.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from parley.drain import DrainMiddleware  # noqa: E402
from parley.logging import AccessLogMiddleware  # noqa: E402

application = AccessLogMiddleware(
    DrainMiddleware(
        ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                "websocket": AllowedHostsOriginValidator(
                    AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
                ),
            }
        )
    )
)
