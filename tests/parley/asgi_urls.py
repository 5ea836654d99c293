"""A URLconf for tests/parley/test_asgi.py: one view that reports its thread, and can be
made to hold it until the test releases it."""

from __future__ import annotations

import threading

from django.http import HttpResponse
from django.urls import path

released = threading.Event()
blocked = threading.Event()  # a blocking view has started


def where(request):
    """The thread this request's view ran on."""
    if request.GET.get("block"):
        blocked.set()
        released.wait(timeout=10)
    return HttpResponse(f"{threading.get_ident()} {threading.current_thread().name}")


urlpatterns = [path("where", where)]
