"""What parley_runtime.websocket relies on in Twisted 26.10.0 (pins.py): after the upgrade
an open socket's transport producer is the HTTPChannel, recognised by two private flags; and
a TCP transport's write buffers, which write_now reads to send only when nothing waits."""

from __future__ import annotations

from twisted.internet import abstract, tcp
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


def test_the_write_buffers_and_send_write_now_relies_on():
    # write_now sends when FileDescriptor.write would have buffered into an empty buffer
    # (_tempDataBuffer/_tempDataLen, dataBuffer/offset, as doWrite drains them), through
    # the connection's own writeSomeData (bytes sent, 0, or an exception when lost).
    assert fingerprint(abstract.FileDescriptor.write) == "8c8f124e8131333b"
    assert fingerprint(abstract.FileDescriptor.doWrite) == "261157599206c334"
    assert fingerprint(tcp.Connection.writeSomeData) == "db3f5897e0022fb6"
    assert tcp.Server.TLS is False and issubclass(tcp.Server, abstract.FileDescriptor)
