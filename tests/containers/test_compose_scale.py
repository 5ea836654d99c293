"""`make up SCALE=1` (docker-compose.scale.yml): web x2, ws x4, PgBouncer, and the channel
layer on two Redis shards that three Sentinels fail over. Pages chat through nginx while
shard a's primary container is killed; a replica is promoted, and every page ends with
every stored message once, in order, after a bounded wait (docs/operations.md "Redis
failover"). Compose v2 only; the profile file itself is checked in test_static.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.test_compose import (
    PASSWORD,
    Stack,
    compose_stack,
    docker,
    post_form,
    psql,
    start_conversation,
)
from tests.helpers.failover import Page, converse_through
from tests.helpers.wsclient import ChatSocket

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1500)]

SHARDED = {"redis", "redis-replica", "redis-b", "redis-b-replica"}
SENTINELS = {"sentinel-1", "sentinel-2", "sentinel-3"}
# docker-compose.scale.yml's fixed addresses (SCALE_SUBNET's default).
SUBNET = "10.213.77"
SHARD_A, SHARD_A_REPLICA, SHARD_B = f"{SUBNET}.201", f"{SUBNET}.202", f"{SUBNET}.211"
# Sentinel's down-after (2 s, deploy/redis/sentinel.conf) + its election and promotion +
# the app's reconnect and the pages' next heartbeat.
MAX_WAIT = 30.0


@pytest.fixture
def scaled(images: str, tmp_path: Path, compose_env) -> Iterator[Stack]:
    with compose_stack("v2", images, tmp_path, compose_env, scale=True) as running:
        yield running


def sentinel_says(stack: Stack, *args: str) -> str:
    (sentinel,) = stack.containers()["sentinel-1"]
    return docker("exec", sentinel["Id"], "redis-cli", "-p", "26379", "sentinel", *args)


def primary_of(stack: Stack, shard: str) -> str:
    return sentinel_says(stack, "get-master-addr-by-name", shard).split()[0]


def test_scale_profile_survives_a_shard_primary_failover(scaled: Stack) -> None:
    services = scaled.containers()
    assert len(services["ws"]) == 4 and len(services["web"]) == 2
    for name in {"ws", "web", "pgbouncer", *SHARDED, *SENTINELS}:
        for info in services[name]:
            assert info["State"]["Health"]["Status"] == "healthy", name
    env = dict(e.split("=", 1) for e in services["ws"][0]["Config"]["Env"])
    assert env["REDIS_URL"] == "sentinel://shard-a/0,sentinel://shard-b/0"
    assert primary_of(scaled, "shard-a") == SHARD_A
    assert primary_of(scaled, "shard-b") == SHARD_B

    # Five rooms of two (one signup POST each: the login rate limit allows eleven at once).
    tag = str(int(time.time()) % 100000)
    rooms: dict[int, list[str]] = {}
    sessions = {}
    for i in range(5):
        a, b = f"a{i}x{tag}", f"b{i}x{tag}"
        for name in (a, b):
            sessions[name] = post_form(
                scaled.base,
                "/accounts/signup/",
                {"username": name, "password1": PASSWORD, "password2": PASSWORD},
            )
        rooms[start_conversation(scaled.base, sessions[a], b)] = [a, b]
    pages = {
        (cid, name): Page(
            ChatSocket(
                f"ws://127.0.0.1:{scaled.port}",
                scaled.base,
                cid,
                f"sessionid={sessions[name].cookies['sessionid']}",
            ).connect(retry=True)
        )
        for cid, members in rooms.items()
        for name in members
    }

    def kill_shard_a_primary() -> float:
        (victim,) = scaled.containers()["redis"]
        started = time.monotonic()
        docker("kill", victim["Id"])  # a crash: no restart (docker kill is a manual stop)
        while primary_of(scaled, "shard-a") == SHARD_A:
            assert time.monotonic() - started < 60, "no replica promoted within 60 s"
            time.sleep(0.2)
        return time.monotonic() - started

    def stored(cid: int) -> dict[str, int]:
        query = "SELECT client_id::text || '|' || seq FROM chat_message WHERE conversation_id = "
        rows = psql(scaled, query + str(int(cid)))
        return {c: int(s) for c, s in (row.split("|") for row in rows)}

    try:
        report = converse_through(pages, rooms, kill_shard_a_primary, stored, before=4.0)
    finally:
        for page in pages.values():
            page.sock.close()
    line = f"redis failover (compose scale profile): {report.line()}"
    print(f"\n{line}")
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts" / "containers"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "failover.json").write_text(
        json.dumps({"promoted_s": report.promoted_after, "waits_s": report.waits}, indent=2)
    )
    assert primary_of(scaled, "shard-a") == SHARD_A_REPLICA
    assert max(report.waits.values()) < MAX_WAIT, report.waits
    # The app stayed up throughout: every web and ws container still healthy.
    for name in ("web", "ws"):
        for info in scaled.containers()[name]:
            assert info["State"]["Health"]["Status"] == "healthy", name
