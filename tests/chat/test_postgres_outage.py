"""A dead Postgres: sends get a clear error (never a fake confirmation), /readyz says so,
and chat resumes with the next sequence once Postgres is back. Real daphne process, real
throwaway Postgres cluster killed with an immediate shutdown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from tests.pg_server import ThrowawayPostgres
from tests.redis_server import delete_keys, free_port
from tests.stack.harness import wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_on_throwaway_postgres(tmp_path):
    pg = ThrowawayPostgres()
    pg.start()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "PYTHONPATH": str(REPO / "src"),
        "DB_POOL_TIMEOUT": "3",
        "DB_CONNECT_TIMEOUT": "2",
        "CHANNEL_LAYER_PREFIX": f"pgout{port}",
        "REDIS_KEY_PREFIX": f"pgout{port}",
    }
    manage = [sys.executable, str(REPO / "src" / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True, timeout=120)
    subprocess.run(
        [
            *manage,
            "seed_loadtest",
            "--rooms",
            "1",
            "--members",
            "2",
            "--password",
            "pw-outage-1",
            "--out",
            str(tmp_path / "users.json"),
        ],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    log = open(tmp_path / "daphne.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "config.asgi:application",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(base + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, 30, "daphne to serve")
    yield pg, base, json.loads((tmp_path / "users.json").read_text())
    proc.terminate()
    proc.wait(timeout=15)
    log.close()
    pg.destroy()
    delete_keys([f"pgout{port}"])  # its daphne's keys, under its own prefixes


def login(base: str, user: dict) -> requests.Session:
    s = requests.Session()
    s.get(base + "/accounts/login/")
    r = s.post(
        base + "/accounts/login/",
        allow_redirects=False,
        data={
            "username": user["username"],
            "password": user["password"],
            "csrfmiddlewaretoken": s.cookies["csrftoken"],
        },
    )
    assert r.status_code == 302, r.text[:300]
    return s


def ws(base: str, session: requests.Session, conversation: int) -> websocket.WebSocket:
    cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    return websocket.create_connection(
        base.replace("http", "ws") + f"/ws/chat/{conversation}?after=0",
        cookie=cookie,
        origin=base,
        timeout=10,
    )


def restart_and_wait(pg: ThrowawayPostgres, base: str) -> None:
    pg.start()
    wait_until(
        lambda: requests.get(base + "/readyz", timeout=15).json()["status"] == "ok",
        30,
        "the database back in readiness after the restart",
    )


def send_until_stored(sock: websocket.WebSocket, text: str, timeout: float = 15) -> str:
    """What a person does with a send refused as "could not be saved" (the page gives the
    text back): send it again, under the same client_id. Just after Postgres returns, a
    process refuses sends for up to CHAT_DB_RETRY_SECONDS before it asks the database again
    (parley.dbcalls). Returns the confirmation."""
    client_id = str(uuid.uuid4())
    deadline = time.monotonic() + timeout
    while True:
        sock.send(json.dumps({"chat_message": text, "client_id": client_id}))
        frame = recv_until(sock, client_id, timeout=max(deadline - time.monotonic(), 0.1))
        if "data-seq=" in frame:
            return frame
        assert refused(frame), frame
        assert time.monotonic() < deadline, f"{text!r} still refused after {timeout} s"
        time.sleep(0.5)


def refused(frame: str) -> bool:
    """An error for a send, not a confirmation: "could not be saved" (the database is down),
    or "busy" with a retry hint (calls queue behind one that waits out the pool timeout)."""
    return 'id="chat-error"' in frame and (
        "could not be saved" in frame or "data-retry-after=" in frame
    )


def recv_until(sock: websocket.WebSocket, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        frame = sock.recv()
        if needle in frame:
            return frame
    raise AssertionError(f"{needle!r} never arrived")


def test_dead_postgres_gives_errors_not_confirmations_and_chat_resumes(
    app_on_throwaway_postgres,
):
    pg, base, users = app_on_throwaway_postgres
    conversation = users[0]["conversation"]
    alice = ws(base, login(base, users[0]), conversation)
    bob = ws(base, login(base, users[1]), conversation)

    alice.send(json.dumps({"chat_message": "before", "client_id": str(uuid.uuid4())}))
    recv_until(bob, 'data-seq="1"')

    pg.kill()
    ready = requests.get(base + "/readyz", timeout=15)
    # still ready (it serves sockets and says why a send fails), degraded on the database
    assert ready.status_code == 200 and ready.json()["degraded"] == ["database"], ready.json()
    cid = str(uuid.uuid4())
    alice.send(json.dumps({"chat_message": "during", "client_id": cid}))
    error = recv_until(alice, 'id="chat-error"', timeout=20)
    assert refused(error) and cid in error
    assert 'data-seq="2"' not in error

    restart_and_wait(pg, base)
    # the first store after the restart meets a pooled connection that died: retried once
    send_until_stored(alice, "after")
    frame = recv_until(bob, 'data-seq="2"')
    assert re.search(r">after<", frame)
    alice.close()
    bob.close()


def test_senders_during_an_outage_are_refused_fast_not_one_timeout_after_another(
    app_on_throwaway_postgres,
):
    """Channels runs consumers' database calls on one thread per process: with Postgres down
    each call waited out the pool timeout (3 s here) behind the ones before it, so the 20th
    sender heard "could not be saved" a minute later. Now one call finds the database down
    and the others are refused at once until it is retried."""
    pg, base, users = app_on_throwaway_postgres
    conversation = users[0]["conversation"]
    alice = ws(base, login(base, users[0]), conversation)
    bob = ws(base, login(base, users[1]), conversation)
    pg.kill()
    started = time.monotonic()
    client_ids = [str(uuid.uuid4()) for _ in range(20)]
    for i, cid in enumerate(client_ids):
        (alice if i % 2 == 0 else bob).send(json.dumps({"chat_message": f"m{i}", "client_id": cid}))
    for sock, mine in ((alice, client_ids[0::2]), (bob, client_ids[1::2])):
        for cid in mine:
            assert refused(recv_until(sock, cid, timeout=20))
    took = time.monotonic() - started
    print(f"\n20 senders with Postgres down: the last error after {took:.1f} s")
    # one pool timeout (3 s) and a retry or two, not 20 x 3 s
    assert took < 12, f"the last of 20 senders waited {took:.1f} s for its error"
    restart_and_wait(pg, base)
    # nothing was stored meanwhile, and chat resumes
    send_until_stored(alice, "back")
    frame = recv_until(bob, 'data-seq="1"', timeout=15)
    assert ">back<" in frame
    alice.close()
    bob.close()


def test_pages_and_handshakes_while_postgres_is_gone_get_retryable_refusals(
    app_on_throwaway_postgres, tmp_path
):
    """A request or a handshake whose database connection died with Postgres is refused as
    something to retry (503 with Retry-After, a handshake the browser retries), never a 500
    or an application crash with a traceback in the log."""
    pg, base, users = app_on_throwaway_postgres
    conversation = users[0]["conversation"]
    session = login(base, users[0])
    assert session.get(f"{base}/c/{conversation}", timeout=10).status_code == 200
    pg.kill()
    for _ in range(3):
        page = session.get(f"{base}/c/{conversation}", timeout=20)
        assert page.status_code == 503 and page.headers["Retry-After"], page.status_code
        with pytest.raises(websocket.WebSocketBadStatusException):
            ws(base, session, conversation)
    log = (tmp_path / "daphne.log").read_text()
    assert "Exception inside application" not in log
    assert "Internal Server Error" not in log
    restart_and_wait(pg, base)
    assert session.get(f"{base}/c/{conversation}", timeout=10).status_code == 200
