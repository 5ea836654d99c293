"""Past capacity, a page's sends are refused, not lost (issue 17): the server says "busy" with
the message's client_id and a retry hint; the page keeps the text, says so, and sends it
again with backoff until it is stored, once.

The overload is made real and deterministic: the messages table is locked against writes,
so Ann's first message blocks in its store and her next frames wait in her socket's queue
longer than a send may wait (CHAT_OVERLOAD_QUEUE_SECONDS: 0.3 s in production, 2 s under
test so that a busy machine refuses nothing elsewhere). Once the lock goes, the
first is stored and the others are refused with retry-after, as a process past its capacity
refuses them."""

from __future__ import annotations

import time

import psycopg
import pytest
import requests
from playwright.sync_api import expect
from prometheus_client.parser import text_string_to_metric_families

from tests.browser.helpers import bodies, open_pair, send, wait_until

pytestmark = pytest.mark.browser

RETRY_TIMEOUT_MS = 20_000  # two retries with backoff (2-3 s hint, doubled, jittered)


def _refused_total(site) -> float:
    """parley_messages_refused_total, summed over reasons and processes."""
    text = requests.get(site.stack.metrics_url, timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "parley_messages_refused_total"
    )


def test_a_refused_send_is_kept_retried_and_stored_once(pages, site):
    cid, ann, bob, _ = open_pair(pages, site)
    refused_before = _refused_total(site)
    texts = ["first, stored late", "second, refused then retried", "third, refused too"]
    url = site.env["DATABASE_URL"]
    with psycopg.connect(url, autocommit=False, connect_timeout=5) as lock:
        lock.execute("LOCK TABLE chat_message IN SHARE MODE")  # reads go on; stores wait
        send(ann, texts[0])
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as probe:
            wait_until(
                lambda: (
                    probe.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query ILIKE '%chat_message%'"
                    ).fetchone()[0]
                    > 0
                ),
                10,
                "Ann's store to block on the lock",
            )
        send(ann, texts[1])
        send(ann, texts[2])
        expect(ann.locator("#messages .msg.pending")).to_have_count(3)
        # The frames queue behind the blocked store a second longer than a send may wait:
        # that age is the stimulus the server sees, not a wait for a result.
        time.sleep(float(site.env["CHAT_OVERLOAD_QUEUE_SECONDS"]) + 1.0)
        lock.rollback()

    # Refused, said so, and the text kept: the pending bubbles stay and are marked.
    expect(ann.locator("#messages .msg.pending.retrying").first).to_be_visible()
    expect(ann.locator("#conn-status")).to_have_attribute("data-kind", "busy")
    # Then retried until stored: each message once, on both pages and in the database.
    for page in (ann, bob):
        expect(page.locator("#messages article.msg[data-seq]")).to_have_count(
            3, timeout=RETRY_TIMEOUT_MS
        )
        # In the order they were typed: the page resends what was refused oldest first,
        # each once the one before it is stored.
        assert bodies(page) == texts
    expect(ann.locator("#messages .msg.pending")).to_have_count(0)
    expect(ann.locator("#conn-status")).not_to_have_attribute("data-kind", "busy")
    assert sorted(body for _, _, body in site.messages(cid)) == sorted(texts)
    wait_until(lambda: _refused_total(site) > refused_before, 5, "the refusal counted")
    pages.shot(ann, "after-overload")
