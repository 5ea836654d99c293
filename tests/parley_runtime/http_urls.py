"""A URLconf for tests/parley_runtime/test_http.py: one view that reports its thread, and can be
made to hold it until the test releases it."""

from __future__ import annotations

import threading

from django.core.signals import request_finished
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path

released = threading.Event()
blocked = threading.Event()  # a blocking view has started


def where(request):
    """The thread this request's view ran on."""
    if request.GET.get("block"):
        blocked.set()
        released.wait(timeout=10)
    return HttpResponse(f"{threading.get_ident()} {threading.current_thread().name}")


def lend(request):
    """Blocks like `where`, with its admission slot lent out (as a hashing login does)."""
    from parley.overload import slot_lent

    with slot_lent():
        blocked.set()
        released.wait(timeout=10)
    return HttpResponse("lent")


def stream(request):
    """A streaming body: its parts are produced while the response is being sent."""
    return StreamingHttpResponse(f"part{i} " for i in range(3))


def fail(request):
    raise RuntimeError("the view failed")


finished: list[str] = []  # request_finished, by the thread that ran it


def _finished(sender, **kwargs) -> None:
    finished.append(threading.current_thread().name)


request_finished.connect(_finished)

urlpatterns = [
    path("where", where),
    path("healthz", where),
    path("lend", lend),
    path("stream", stream),
    path("fail", fail),
]
