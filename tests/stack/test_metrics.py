"""Metrics from the real stack: traffic through nginx moves the counters by exactly what
happened, summed over gunicorn workers and both daphnes; the exporter is internal only."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.wsclient import ChatSocket
from tests.stack.harness import wait_until

pytestmark = [pytest.mark.stack]


def scrape(stack) -> dict[tuple[str, tuple], float]:
    text = requests.get(stack.metrics_url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    wanted = tuple(sorted(labels.items()))
    return sum(
        v for (n, lab), v in samples.items() if n == name and all(item in lab for item in wanted)
    )


def test_n_messages_to_m_members_count_n_stored_and_n_times_m_deliveries(stack, room, cookies):
    conversation_id, members = room
    n, m = 6, len(members)
    before = scrape(stack)
    socks = [
        ChatSocket(stack.ws_base, stack.url, conversation_id, cookies(u)).connect() for u in members
    ]
    for i in range(n):
        socks[i % m].send(f"metric {i}")
    for sock in socks:
        sock.wait_seq(n)

    def moved():
        after = scrape(stack)
        stored = value(after, "parley_messages_stored_total") - value(
            before, "parley_messages_stored_total"
        )
        delivered = value(after, "parley_deliveries_total") - value(
            before, "parley_deliveries_total"
        )
        return (stored, delivered) if delivered >= n * m else None

    stored, delivered = wait_until(moved, timeout=10, what="metrics to move")
    assert (stored, delivered) == (n, n * m)
    after = scrape(stack)
    assert value(after, "parley_websockets_open", kind="chat") >= m
    assert (
        value(after, "parley_broadcast_seconds_count")
        - value(before, "parley_broadcast_seconds_count")
        == n
    )
    for sock in socks:
        sock.close()


def test_a_refused_socket_counts_its_reason(stack, room):
    conversation_id, _ = room
    before = value(scrape(stack), "parley_websocket_refusals_total", reason="unauthenticated")
    sock = ChatSocket(stack.ws_base, stack.url, conversation_id, {}).connect()
    assert sock.wait_close() == 4401
    wait_until(
        lambda: (
            value(scrape(stack), "parley_websocket_refusals_total", reason="unauthenticated")
            == before + 1
        ),
        timeout=10,
        what="the refusal to be counted",
    )


def test_http_latency_by_route_and_no_metrics_through_nginx(stack):
    assert requests.get(stack.url + "/healthz", timeout=5).status_code == 200
    samples = scrape(stack)
    assert value(samples, "parley_http_request_duration_seconds_count", route="/healthz") >= 1
    public = requests.get(stack.url + "/metrics", timeout=5)
    assert public.status_code == 404
    assert "parley_" not in public.text


def test_invented_http_methods_are_one_label_value_straight_at_daphne(stack):
    """A client picks the method: each new label value used to be a new series in every
    process's multiprocess file (2,000 invented methods grew them to 8 MiB on the ws pod's
    64 MiB in-memory volume). Sent straight to a daphne, not through nginx."""
    import http.client

    for i in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", stack.ws_port(0), timeout=5)
        conn.request(f"INVENTED{i}", "/healthz")
        conn.getresponse().read()
        conn.close()
    samples = scrape(stack)
    methods = {
        dict(labels).get("method")
        for (name, labels) in samples
        if name == "parley_http_request_duration_seconds_count"
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert value(samples, "parley_http_request_duration_seconds_count", method="other") >= 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "INVENTED"])
def test_nginx_refuses_anything_but_get_on_the_websocket_path(stack, method):
    response = requests.request(method, f"{stack.url}/ws/chat/1", timeout=5)
    assert response.status_code == 405  # nginx's answer: Django would say 404
    assert "GET" in response.headers.get("Allow", "")
