"""A daphne that dies between storing a message and telling anyone: every member still gets it.

Two real daphne processes on one database and one Redis. Alice's daphne is started through a
test-only ASGI module that ends the process (os._exit, as a SIGKILL or an OOM kill would) at
the named step, for a message whose text names that step; Bob's daphne is stock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from tests._env import RUN_TAG
from tests.helpers.wsclient import ChatSocket
from tests.redis_server import delete_keys, free_port
from tests.stack.harness import login, wait_until

REPO = Path(__file__).resolve().parents[2]
DIED = 17

FAULT_APP = '''
"""Ends this process at a step of the send path, for a message whose text names the step."""
import os

from config.asgi import application  # noqa: F401 (sets Django up)
from chat import consumers, hub

_deliver = consumers.ChatConsumer.deliver
_flush = hub.ConversationHub.flush_broadcasts


async def deliver(self, messages):
    if any("die-before-confirm" in m for m in messages):  # stored, the sender not told
        os._exit(17)
    return await _deliver(self, messages)


async def flush_broadcasts(self):
    if any("die-before-broadcast" in e["frame"] for e in self.unbroadcast):
        os._exit(17)  # stored and confirmed, the peers not yet told
    return await _flush(self)


consumers.ChatConsumer.deliver = deliver
hub.ConversationHub.flush_broadcasts = flush_broadcasts
'''


@pytest.fixture
def two_daphnes(tmp_path):
    name = f"parley_crash_{RUN_TAG}"
    admin = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    (tmp_path / "faultapp.py").write_text(FAULT_APP)
    prefix = f"crash{RUN_TAG}"
    env = {
        **os.environ,
        "DATABASE_URL": admin.rsplit("/", 1)[0] + "/" + name,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO / 'src'}",
        "CHANNEL_LAYER_PREFIX": prefix,
        "REDIS_KEY_PREFIX": prefix,
    }
    manage = [sys.executable, str(REPO / "src" / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True, timeout=120)
    users_file = tmp_path / "users.json"
    subprocess.run(
        [*manage, "seed_loadtest", "--rooms", "1", "--members", "2"]
        + ["--password", "pw-crash-1", "--out", str(users_file)],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    procs: list[subprocess.Popen] = []

    def start(app: str, **overrides: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        log = open(tmp_path / f"daphne-{port}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
            env={**env, **overrides},
            stdout=log,
            stderr=log,
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(base + "/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 30, f"daphne {app} to serve")
        return proc, base

    yield start, json.loads(users_file.read_text())
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    delete_keys([prefix])


def socket_for(base: str, user: dict) -> ChatSocket:
    session = login(base, user["username"], user["password"])
    return ChatSocket(
        base.replace("http", "ws"), base, user["conversation"], session.cookies.get_dict()
    ).connect(after=0)


def test_a_retried_send_of_a_message_stored_by_a_dead_process_reaches_every_member(two_daphnes):
    """The process died after storing, before confirming: the page resends the same client_id
    elsewhere, is told `created=False`, and that retry used to be confirmed to the sender
    only. The heartbeat, which would also heal it, is set far apart here: the retry alone
    must bring it."""
    start, users = two_daphnes
    dying, dying_base = start("faultapp:application")
    _, base = start("config.asgi:application", CHAT_PRESENCE_TTL="900")
    bob = socket_for(base, users[1])
    alice = socket_for(dying_base, users[0])
    client_id = alice.send("die-before-confirm", str(uuid.uuid4()))
    assert dying.wait(timeout=15) == DIED
    alice = socket_for(base, users[0])  # what chat.js does: reconnect, resend the pending one
    assert alice.send("die-before-confirm", client_id) == client_id
    alice.wait_seq(1)
    bob.wait_seq(1, timeout=10)
    bob.quiet(0.5)
    assert bob.seqs == [1]
    alice.close()
    bob.close()


def test_a_message_confirmed_by_a_process_that_died_before_broadcasting_reaches_peers(
    two_daphnes,
):
    """Stored and (maybe) confirmed, and the sender never retries (a confirmed page would not):
    the peers' process heartbeat finds the newer sequence in the database and heals it
    (CHAT_PRESENCE_TTL / 3 apart; 2 s here)."""
    start, users = two_daphnes
    dying, dying_base = start("faultapp:application")
    _, base = start("config.asgi:application")
    bob = socket_for(base, users[1])
    alice = socket_for(dying_base, users[0])
    alice.send("die-before-broadcast")  # and the sender never retries it
    assert dying.wait(timeout=15) == DIED
    bob.wait_seq(1, timeout=15)
    assert bob.seqs == [1]
    bob.close()
