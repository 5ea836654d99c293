"""Request latency by route, for Prometheus; health checks; 503 past capacity."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import resolve

from parley import metrics
from parley.overload import busy_response, note_refusal, refusal_reason

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


class OverloadMiddleware:
    """Answers 503 with Retry-After, not 500, when a view found the process over capacity:
    no pooled database connection within DB_POOL_TIMEOUT, or no password hashing slot
    (parley.auth).

    Django hands middleware `process_exception` for exceptions from the view (decorators
    such as login_required, which loads the session, and TemplateResponse rendering
    included). Every database access of a request in this project starts in its view, and
    the connection it takes is the request's until the end, so the middlewares' response
    phase (session save) never waits for the pool. One warning line per refusal, no
    traceback: a storm would otherwise write one per request.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        reason = refusal_reason(exception)
        if reason is None:
            return None  # Django's handling: a 500, logged with its traceback
        note_refusal(reason, request.method, request.path)
        return busy_response()
