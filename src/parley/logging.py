"""JSON log lines carrying the request id that nginx generates (X-Request-ID)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def clean_request_id(raw: str | bytes | None) -> str:
    """Accept the proxy's request id if it looks sane, otherwise mint one."""
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if raw and _SAFE_ID.match(raw):
        return raw
    return uuid.uuid4().hex


class Throttled:
    """A warning that may fire thousands of times a second (a reconnect storm's refusals):
    logged at most once per `every` seconds per reason, with how many were not logged since.
    Writing a JSON line per refusal cost more CPU than the refusal itself, in exactly the
    moment the process has none to spare."""

    def __init__(self, logger: logging.Logger, msg: str, every: float = 1.0) -> None:
        self.logger, self.msg, self.every = logger, msg, every
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warning(self, why: str) -> None:
        now = time.monotonic()
        if now - self.last.get(why, -self.every) < self.every:
            self.suppressed[why] = self.suppressed.get(why, 0) + 1
            return
        self.last[why] = now
        self.logger.warning(
            self.msg, extra={"why": why, "not_logged_since": self.suppressed.pop(why, 0)}
        )


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    # color_message: uvicorn's ANSI-coloured copy of msg.
    _skip = set(vars(logging.makeLogRecord({}))) | {
        "message",
        "asctime",
        "request_id",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in vars(record).items():
            if key not in self._skip and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, (int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RequestIdMiddleware:
    """Binds X-Request-ID (from nginx) to the logging context and echoes it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # Under ASGI, AccessLogMiddleware has already bound the id for this connection.
        rid = request_id_var.get()
        if rid == "-":
            rid = clean_request_id(request.headers.get("X-Request-ID"))
        token = request_id_var.set(rid)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        return response


access_logger = logging.getLogger("parley.access")


def scope_header(scope: dict, name: bytes) -> bytes | None:
    """The first value of an ASGI scope's header `name` (lower-case bytes), or None."""
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


class AccessLogMiddleware:
    """ASGI access log, one JSON line per HTTP request and per websocket, for gunicorn and
    daphne alike. It binds the request id (X-Request-ID from nginx, or a fresh one) to the
    logging context of the whole connection, so the app's own log lines carry it too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = clean_request_id(scope_header(scope, b"x-request-id"))
        request_id_var.set(rid)  # this task (one connection) only
        started = time.monotonic()
        conn = _Connection(scope, receive, send)
        try:
            app = self.app(scope, conn.receive, conn.send)
            # This coroutine lasts as long as the connection (hours, for a websocket): what
            # the log line needs is in `conn`, and the scope is the application's.
            del scope, receive, send
            await app
        finally:
            elapsed = round((time.monotonic() - started) * 1000, 1)
            if conn.kind == "http":
                access_logger.info(
                    "%s %s %s",
                    conn.method,
                    conn.path,
                    conn.status,
                    extra={
                        **conn.fields(),
                        "scheme": conn.scheme,
                        "method": conn.method,
                        "status": conn.status,
                        "duration_ms": elapsed,
                    },
                )
            else:
                access_logger.info(
                    "websocket closed",
                    extra={
                        **conn.fields(),
                        "status": conn.status or 403,
                        "close_code": conn.close_code,
                        "duration_ms": elapsed,
                    },
                )


class _Connection:
    """One connection's access-log state, and the send/receive that record it (slots: a
    websocket keeps this for its whole life)."""

    __slots__ = (
        "kind",
        "path",
        "client",
        "method",
        "scheme",
        "status",
        "close_code",
        "_receive",
        "_send",
    )

    def __init__(self, scope: dict, receive: Any, send: Any) -> None:
        self.kind = scope["type"]
        self.path = scope.get("path", "")
        self.client = scope.get("client")
        self.method = scope.get("method")
        self.scheme = scope.get("scheme")
        self.status: int | None = None
        self.close_code: int | None = None
        self._receive = receive
        self._send = send

    def fields(self) -> dict[str, Any]:
        client = self.client
        return {
            "type": self.kind,
            "path": self.path,
            "client": f"{client[0]}:{client[1]}" if client else None,
        }

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "websocket.accept":
            self.status = 101
            access_logger.info("websocket open", extra=self.fields())
        elif kind == "websocket.close" and self.close_code is None:
            self.close_code = message.get("code", 1000)
        await self._send(message)

    async def receive(self) -> dict:
        message = await self._receive()
        if message["type"] == "websocket.disconnect" and self.close_code is None:
            self.close_code = message.get("code", 1006)
        return message


class ConsoleFormatter(logging.Formatter):
    """One short human-readable line per record, for `make dev` (DEBUG): time, level,
    logger, message, and an access line's duration."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            time.strftime("%H:%M:%S", time.localtime(record.created))
            + f" {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        duration = getattr(record, "duration_ms", None)
        if duration is not None:
            line += f" ({duration} ms)"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def json_logging_config(level: str, loggers: dict | None = None, human: bool = False) -> dict:
    """dictConfig for one JSON line per record on stdout, with the request id; shared by
    Django's LOGGING and the gunicorn master (deploy/gunicorn.conf.py).

    human=True (DEBUG, `make dev`): one readable line per record instead, and one line per
    request: parley.access logs it, so the development server's own request line
    (django.channels.server) and Django's DEBUG console handler (which printed every
    `django.*` record a second time) are silenced."""
    loggers = dict(loggers or {})
    if human:
        # A NullHandler, not none: a logger without handlers falls back to logging's
        # lastResort, which prints warnings (every 404) anyway.
        loggers["django.channels.server"] = {"handlers": ["null"], "propagate": False}
        loggers["django"] = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "parley.logging.RequestIdFilter"}},
        "formatters": {
            "json": {"()": "parley.logging.JsonFormatter"},
            "console": {"()": "parley.logging.ConsoleFormatter"},
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "console" if human else "json",
                "filters": ["request_id"],
            },
            "null": {"class": "logging.NullHandler"},
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": loggers,
    }
