"""What parley_runtime.websocket relies on in Twisted 26.10.0 (pins.py): after the upgrade
an open socket's transport producer is the HTTPChannel, recognised by two private flags."""

from __future__ import annotations

from twisted.web.http import HTTPChannel

from tests.parley_runtime.canary import fingerprint


def test_the_channel_flags_the_upgrade_reads():
    assert fingerprint(HTTPChannel.__init__) == "16fc648306b26bc1"
    channel = HTTPChannel()
    assert channel._handlingRequest is False
    assert channel._requestProducer is None


def test_its_producer_methods_are_what_the_stand_in_replaces():
    for name in ("pauseProducing", "resumeProducing", "stopProducing"):
        assert callable(getattr(HTTPChannel, name))
