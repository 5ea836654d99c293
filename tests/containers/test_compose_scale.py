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

from tests.containers import engine as eng
from tests.containers.test_compose import (
    APP_IMAGE,
    ARTIFACTS,
    PASSWORD,
    Stack,
    build_ca_bundle,
    compose_stack,
    docker,
    free_port,
    make,
    plain_http_values,
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


@pytest.fixture(scope="module")
def scaled(images: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("scale")
    with compose_stack("v2", images, tmp_path, plain_http_values, scale=True) as running:
        yield running


def test_the_load_generator_image_runs_a_master_and_workers(scaled: Stack, tmp_path) -> None:
    """loadtest/Dockerfile's image, as loadtest/k8s runs it: a master and two workers (the
    master reads the users the app seeded), through nginx; the master exits 0 only when
    every message reached every member once, in order."""
    image = "parley-loadtest:ci" + APP_IMAGE.removeprefix("parley:ci")
    make(
        "build-loadtest",
        "STANDINS=1",
        f"LOADTEST_IMAGE={image}",
        f"EXTRA_CA_BUNDLE={build_ca_bundle()}",
        timeout=1200,
    )
    web = scaled.containers()["web"][0]
    users = docker(
        "exec",
        web["Id"],
        "parley-entrypoint",
        "manage",
        "seed_loadtest",
        "--rooms",
        "2",
        "--members",
        "3",
        "--password",
        "Load-test-pass-7",
        "--prefix",
        "img",
        "--out",
        "-",
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    # The JSON starts a line of its own (a log line may come before it).
    start = 0 if users.startswith("[") else users.index("\n[") + 1
    (shared / "users.json").write_text(users[start:])
    shared.chmod(0o755)
    (shared / "users.json").chmod(0o644)
    name = f"{scaled.project}-lt"
    knobs = {
        "LOCUST_HOST": scaled.base,
        "LOCUST_ROOMS": "2",
        "LOCUST_MEMBERS": "3",
        "LOCUST_USERS": "6",
        "LOCUST_SPAWN_RATE": "6",
        # Logins through nginx are paced at its limit (20 a minute per address): 6 take
        # ~18 s before sending starts.
        "LOCUST_RUN_TIME": "45s",
        "LOCUST_EXPECT_WORKERS": "2",
        # Completeness is what this checks; latency on a shared 2-core machine running the
        # other lane beside 15 containers is a benchmark's business, not this test's.
        "LOCUST_P99_THRESHOLD_MS": "10000",
    }
    env = [arg for k, v in knobs.items() for arg in ("-e", f"{k}={v}")]
    locked = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    master, port = f"{name}-master", str(free_port())  # not 5557: other tests use it
    try:
        docker(
            "run",
            "-d",
            "--name",
            master,
            *locked,
            *env,
            "-v",
            f"{shared}:/shared:ro",
            image,
            "--config",
            "loadtest/locust.conf",
            "--master",
            "--headless",
            "--master-bind-port",
            port,
            "--users-file",
            "/shared/users.json",
        )
        for i in (1, 2):
            docker(
                "run",
                "-d",
                "--name",
                f"{name}-w{i}",
                *locked,
                image,
                "-f",
                "loadtest/locustfile.py",
                "--worker",
                "--master-host",
                "127.0.0.1",
                "--master-port",
                port,
            )
        code = docker("wait", master, timeout=300).strip()
        logs = eng.run(["docker", "logs", master], check=False, timeout=60)
        out = logs.stdout + logs.stderr
        (ARTIFACTS / "loadtest-image.log").write_text(out)
        assert code == "0", out[-3000:]
        assert "2 workers connected" in out and "WS       fanout" in out
    finally:
        for container in (master, f"{name}-w1", f"{name}-w2"):
            docker("rm", "-f", container, check=False)


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


def test_pages_in_chromium_keep_every_message_through_a_second_failover(scaled: Stack) -> None:
    """The browser check through the scale profile: two people's pages in Debian's Chromium
    (through nginx), and while one of them sends, shard b's primary container is killed.
    Both pages end with every message once, in order, none left pending; the sender's page
    resent what was refused meanwhile (chat.js), without the person doing anything."""
    from tests import preflight
    from tests.tiers import missing

    try:
        preflight.chromium()
    except preflight.Missing as exc:
        missing("Chromium", exc.detail, exc.fix)
    from playwright.sync_api import expect, sync_playwright

    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.browser.helpers import bodies, send, seqs, wait_socket

    tag = str(int(time.time()) % 100000)
    ann, bob = f"annb{tag}", f"bobb{tag}"
    sessions = {
        name: post_form(
            scaled.base,
            "/accounts/signup/",
            {"username": name, "password1": PASSWORD, "password2": PASSWORD},
        )
        for name in (ann, bob)
    }
    cid = start_conversation(scaled.base, sessions[ann], bob)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            pages = {}
            for name in (ann, bob):
                context = browser.new_context(base_url=scaled.base)
                context.set_default_timeout(15_000)
                context.add_cookies(
                    [
                        {
                            "name": "sessionid",
                            "value": sessions[name].cookies["sessionid"],
                            "url": scaled.base,
                        }
                    ]
                )
                page = context.new_page()
                page.on("pageerror", lambda exc, who=name: errors.append(f"{who}: {exc}"))
                page.goto(f"/c/{cid}")
                wait_socket(page)
                pages[name] = page
            send(pages[ann], "before the failover")
            expect(pages[bob].locator("#messages article.msg[data-seq]")).to_have_count(1)

            (victim,) = scaled.containers()["redis-b"]
            docker("kill", victim["Id"])
            killed = time.monotonic()
            texts = ["before the failover"]
            for i in range(3):  # sent while the shard is down and being failed over
                texts.append(f"during the failover {i}")
                send(pages[ann], texts[-1])
                time.sleep(1.0)
            while primary_of(scaled, "shard-b") == SHARD_B:
                assert time.monotonic() - killed < 60, "no replica promoted within 60 s"
                time.sleep(0.2)
            texts.append("after the failover")
            send(pages[ann], texts[-1])
            shown = {}
            for name, page in pages.items():
                expect(page.locator("#messages article.msg[data-seq]")).to_have_count(
                    len(texts), timeout=60_000
                )
                assert seqs(page) == list(range(1, len(texts) + 1)), name
                shown[name] = bodies(page)
                # Nothing left pending on the sender's page: every bubble confirmed.
                assert page.locator("#messages article.msg:not([data-seq])").count() == 0
            # Each message once, and both pages in the one stored order. A send refused as
            # busy is stored when chat.js resends it, after a message typed later may have
            # been: the order is the conversation's, not the typing's.
            assert sorted(shown[ann]) == sorted(texts), shown[ann]
            assert shown[ann] == shown[bob]
        finally:
            browser.close()
    assert not errors, errors
    assert primary_of(scaled, "shard-b") == f"{SUBNET}.212"
