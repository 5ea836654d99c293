"""Request latency by route, for Prometheus."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import resolve

from parley import metrics

# Label values come from closed sets: every new value is a new series in every process's
# multiprocess file, and a client chooses the method it sends.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str | None) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


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
            route=route,
            method=method_label(request.method),
            status=status_label(response.status_code),
        ).observe(time.perf_counter() - started)
        return response


class HealthCheckMiddleware:
    """Answers /healthz and /readyz before anything reads the Host header.

    Probes (kubelet, Docker healthchecks) send the pod's address or whatever Host they were
    given; listing `localhost` in ALLOWED_HOSTS for them also made it an allowed websocket
    Origin in production. Health answers name no host and set no cookie, so they need no Host
    check: everything else still gets Django's.
    """

    PATHS = frozenset({"/healthz", "/readyz"})

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info not in self.PATHS:
            return self.get_response(request)
        match = resolve(request.path_info)
        request.resolver_match = match  # for the route label of the latency metric
        return match.func(request)
