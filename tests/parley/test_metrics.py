"""Counters move by what actually happened (real consumers, Redis layer, Postgres)."""

from __future__ import annotations

import urllib.request

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from prometheus_client import REGISTRY

from chat import services
from parley import metrics_export
from tests.factories import communicator, make_user, session_cookie
from tests.helpers.ws import open_socket, room, send
from tests.redis_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_n_messages_in_a_room_of_m_give_n_stored_and_n_times_m_deliveries():
    n, m = 7, 3
    conversation, _, cookies = await room(m)
    before_stored = value("parley_messages_stored_total")
    before_deliveries = value("parley_deliveries_total")
    before_open = value("parley_websockets_open", kind="chat")
    socks = [await open_socket(conversation.pk, c) for c in cookies]
    assert value("parley_websockets_open", kind="chat") == before_open + m
    for i in range(n):
        await send(socks[i % m][0], f"count me {i}")
    for _, _, inbox in socks:
        await inbox.wait_seqs(list(range(1, n + 1)))
    assert value("parley_messages_stored_total") - before_stored == n
    assert value("parley_deliveries_total") - before_deliveries == n * m
    assert value("parley_broadcast_seconds_count") >= n
    for comm, _, _ in socks:
        await comm.disconnect()
    assert value("parley_websockets_open", kind="chat") == before_open


async def test_refusals_are_counted_by_reason():
    conversation, _, cookies = await room()
    outsider_cookie = await sync_to_async(lambda: session_cookie(make_user()))()
    before = {
        r: value("parley_websocket_refusals_total", reason=r)
        for r in ("unauthenticated", "forbidden", "origin")
    }
    comm, _, inbox = await open_socket(conversation.pk, None)
    await inbox.wait_close()
    comm, _, inbox = await open_socket(conversation.pk, outsider_cookie)
    await inbox.wait_close()
    comm = communicator(f"/ws/chat/{conversation.pk}", cookies[0], origin=b"http://evil.test")
    assert not (await comm.connect(timeout=5))[0]
    for reason in before:
        assert value("parley_websocket_refusals_total", reason=reason) == before[reason] + 1


async def test_a_forced_gap_and_a_replay_are_counted():
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    gaps = value("parley_sequence_gaps_total", how="live")
    healed = value("parley_gap_messages_healed_total")
    # a message the layer never carried: the next broadcast reveals the gap
    await sync_to_async(services.message_create)(
        conversation_id=conversation.pk, sender=users[0], body="dropped"
    )
    await send(alice, "reveals the gap")
    await bob_in.wait_seqs([1, 2])
    assert value("parley_sequence_gaps_total", how="live") >= gaps + 1
    assert value("parley_gap_messages_healed_total") >= healed + 1
    replays = value("parley_replays_total")
    replayed = value("parley_messages_replayed_total")
    await bob.disconnect()
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1], after=0)
    await bob_in.wait_seqs([1, 2])
    assert value("parley_replays_total") == replays + 1
    assert value("parley_messages_replayed_total") == replayed + 2
    await alice.disconnect()
    await bob.disconnect()


def test_http_latency_is_recorded_by_route_and_readiness_failures_by_dependency():
    before = value(
        "parley_http_request_duration_seconds_count", route="/healthz", method="GET", status="200"
    )
    assert Client().get("/healthz").status_code == 200
    assert (
        value(
            "parley_http_request_duration_seconds_count",
            route="/healthz",
            method="GET",
            status="200",
        )
        == before + 1
    )
    Client().get("/no/such/page/12345")
    assert (
        value(
            "parley_http_request_duration_seconds_count",
            route="unmatched",
            method="GET",
            status="404",
        )
        >= 1
    )


def test_exporter_serves_the_exposition_format_on_its_own_port():
    port = free_port()
    assert metrics_export.serve(port=port, addr="127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        "parley_messages_stored_total",
        "parley_deliveries_total",
        "parley_websockets_open",
        "parley_broadcast_seconds_bucket",
    ):
        assert name in body


def test_any_process_can_start_in_multiprocess_mode_before_the_directory_exists(tmp_path):
    """migrate, manage commands and init containers share the servers' environment."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    target = tmp_path / "not-yet" / "prometheus"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(target),
        "DEBUG": "1",
        "PYTHONPATH": str(repo / "src"),
    }
    result = subprocess.run(
        [sys.executable, "src/manage.py", "check"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert target.is_dir()
