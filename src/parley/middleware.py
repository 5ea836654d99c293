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
