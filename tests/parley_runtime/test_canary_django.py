"""What parley_runtime.http relies on in Django 5.2.19 (pins.py): OneHopASGIHandler skips
ASGIHandler.__init__ (it loads the middleware in async mode) and reuses its request
reading, request making and response sending."""

from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler

from tests.parley_runtime.canary import fingerprint


def test_the_init_the_tuned_handler_skips_does_nothing_else():
    assert fingerprint(ASGIHandler.__init__) == "ff30c726f5053332"


def test_the_request_path_the_tuned_handler_replaces():
    assert fingerprint(ASGIHandler.__call__) == "569fba593644398a"
    assert fingerprint(ASGIHandler.handle) == "7c6356071533fad4"
    for name in ("read_body", "create_request", "send_response"):
        assert callable(getattr(ASGIHandler, name))
    assert ASGIHandler.chunk_size > 0
