"""parley.logging.Throttled: a storm's refusals are logged once per interval per reason, with
how many were not, instead of a line each."""

from __future__ import annotations

import logging
import time

from parley.logging import Throttled


def test_a_burst_logs_one_line_per_reason_then_counts_what_it_did_not_log(caplog):
    logger = logging.getLogger("parley.test_throttled")
    refused = Throttled(logger, "websocket handshake refused", every=0.2)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(1000):
            refused.warning("busy")
        refused.warning("down")
        assert [(r.why, r.not_logged_since) for r in caplog.records] == [("busy", 0), ("down", 0)]
        deadline = time.monotonic() + 5
        while len(caplog.records) < 3 and time.monotonic() < deadline:
            refused.warning("busy")
            time.sleep(0.01)
    last = caplog.records[-1]
    assert last.getMessage() == "websocket handshake refused"
    assert last.why == "busy" and last.not_logged_since >= 999
