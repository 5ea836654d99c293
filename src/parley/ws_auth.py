"""Who is on the other end of a websocket: Channels' AuthMiddlewareStack in one layer.

`AuthMiddlewareStack` is three middlewares (cookies, session, user), each keeping its own
copy of the scope and its own suspended coroutine for as long as the socket is open, and
the session layer wraps every `send` to save a modified session. A websocket never writes
the session, and an idle socket's memory is what bounds how many one process holds: this
resolves the user once, with the same rules (`channels.auth.get_user`: the session's
backend, user and auth hash, flushing a session whose hash no longer matches), and passes
one scope with `user` to the router; the session and cookies are not kept.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from channels.auth import get_user
from django.conf import settings
from django.db import DatabaseError
from django.http.cookie import parse_cookie

from parley.dbcalls import DatabaseUnavailable, db
from parley.logging import Throttled, scope_header

logger = logging.getLogger(__name__)
refused = Throttled(logger, "websocket handshake refused")


class WebsocketAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        # This coroutine waits on the inner application for the socket's lifetime: the
        # cookies and the session are looked at in another, which is then gone.
        try:
            user, session_key = await scope_user(scope)
        except DatabaseError as exc:
            # A reconnect storm (refused at once, DatabaseUnavailable) or Postgres gone (a
            # connection that died with it): refused at the handshake, which the browser
            # retries with backoff; one warning line a second, no traceback.
            refused.warning(str(exc) if isinstance(exc, DatabaseUnavailable) else repr(exc))
            await send({"type": "websocket.close", "code": 1013})
            return None
        # The key, not the session: the process heartbeat re-checks it (chat.heartbeat).
        inner = self.inner(dict(scope, user=user, session_key=session_key), receive, send)
        del scope, receive, send  # the application's now, for as long as it runs
        return await inner


async def scope_user(scope: dict) -> tuple[Any, str | None]:
    """The user of the session the scope's cookie names (AnonymousUser if none), and the
    session's key."""
    header = scope_header(scope, b"cookie")
    cookies = parse_cookie(header.decode("latin1")) if header else {}
    store = import_module(settings.SESSION_ENGINE).SessionStore
    key = cookies.get(settings.SESSION_COOKIE_NAME)
    # channels' get_user, on a handshake reader thread through the consumers' bounded gate.
    user = await db(get_user.func, slot_wait=settings.CHAT_DB_CONNECT_WAIT_SECONDS, read=True)(
        {"session": store(key)}
    )
    return user, key
