"""Request latency by route, for Prometheus."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from parley import metrics


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        if match is not None:
            route = "/" + (match.route or "")
        elif request.path.startswith("/static/"):
            route = "static"
        else:
            route = "unmatched"  # never the raw path: unbounded label values
        metrics.HTTP_REQUEST_SECONDS.labels(
            route=route, method=request.method, status=str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response


class SyncChainMiddleware:
    """Innermost, sync only: makes Django build the whole middleware chain in sync mode.

    Under ASGI, Django runs an async-capable middleware in async mode whenever the handler
    inside it is async, and MiddlewareMixin then calls each of its process_* hooks through
    sync_to_async: a hop to the request's thread and back per hook, about ten per page with
    the stock middleware. With this one at the bottom every middleware above it runs
    synchronously on the request's thread: one hop in, one out and one for the view.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)
