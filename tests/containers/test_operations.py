"""Operating the compose stack (issue "Operations"): `make backup` / `make restore` round trip
and `make upgrade`, a rolling replacement of web and ws while two clients chat.

Same stack fixture as test_compose (both Compose implementations): backup and restore lean on
`compose run` with profiles and mounts, the roll on `up --scale --no-recreate`, which the two
implementations handle separately.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.containers.test_compose import (
    TIMINGS,
    Stack,
    converse_during,
    docker,
    make,
    psql,
    sign_up_and_log_in,
    start_conversation,
)
from tests.helpers.wsclient import ChatSocket

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1500)]

# 5xx answers through nginx allowed during `make upgrade` (docs/operations.md "Upgrades
# without downtime"): none. GETs that meet a stopping gunicorn are retried on the other
# replica (proxy_next_upstream).
UPGRADE_5XX_BUDGET = 0

# What must survive a backup/restore exactly; {c} is the conversation under test.
ROWS = {
    "conversation": "SELECT id, title, last_seq, last_message_preview FROM chat_conversation"
    " WHERE id = {c}",
    "participant": "SELECT conversation_id, user_id, last_read_seq FROM chat_participant"
    " WHERE conversation_id = {c} ORDER BY user_id",
    "message": "SELECT id, conversation_id, seq, client_id, sender_id, body, created_at"
    " FROM chat_message WHERE conversation_id = {c} ORDER BY seq",
    "user": "SELECT id, username, password FROM auth_user ORDER BY id",
    "session": "SELECT session_key, session_data, expire_date FROM django_session ORDER BY 1",
}


# The conversation written to during the backup: its counter and its rows agree.
BUSY = (
    "SELECT (SELECT last_seq FROM chat_conversation WHERE id = {c}), count(*),"
    " coalesce(max(seq), 0) FROM chat_message WHERE conversation_id = {c}"
)


def db_rows(stack: Stack, conversation: int) -> dict[str, list[str]]:
    return {name: psql(stack, q.format(c=conversation)) for name, q in ROWS.items()}


def chat_client(stack: Stack, session: requests.Session, conversation: int) -> ChatSocket:
    client = ChatSocket(
        f"ws://127.0.0.1:{stack.port}",
        stack.base,
        conversation,
        f"sessionid={session.cookies['sessionid']}",
    )
    client.connect()
    return client


def make_fails(stack: Stack, *args: str) -> str:
    with pytest.raises(AssertionError) as failed:
        make(*args, *stack.make_args, env=stack.env, timeout=600)
    return str(failed.value)


class Writer(threading.Thread):
    """Sends a message every 0.4 s until stopped: the app writes while pg_dump runs (25 per
    10 s stays under CHAT_RATE_LIMIT, 30)."""

    def __init__(self, client: ChatSocket) -> None:
        super().__init__(daemon=True)
        self.client, self.stop, self.sent = client, threading.Event(), 0

    def run(self) -> None:
        while True:
            self.client.send(f"written during the backup {self.sent}")
            self.sent += 1
            if self.stop.wait(0.4):
                return


def test_backup_restore_and_rolling_upgrade(stack: Stack, tmp_path: Path) -> None:
    tag = stack.project[-6:] + str(int(time.time()) % 100000)
    alice = sign_up_and_log_in(stack.base, f"alice{tag}")
    bob = sign_up_and_log_in(stack.base, f"bob{tag}")
    conversation = start_conversation(stack.base, alice, f"bob{tag}")
    busy = start_conversation(stack.base, bob, f"alice{tag}")
    a, b = chat_client(stack, alice, conversation), chat_client(stack, bob, conversation)
    writer_client = chat_client(stack, bob, busy)
    try:
        # 1. chat; bob opens the page, which moves his read marker.
        said = set()
        for i in range(3):
            said |= {a.send(f"hi {i}"), b.send(f"hello {i}")}
        a.wait_client_ids(said)
        b.wait_client_ids(said)
        assert bob.get(f"{stack.base}/c/{conversation}", timeout=10).status_code == 200
        before = db_rows(stack, conversation)
        assert len(before["message"]) == 6 and before["conversation"][0].split("|")[2] == "6"
        assert {r.split("|")[2] for r in before["participant"]} == {"0", "6"}

        # 2. back up while the app writes to the other conversation.
        dump = backup_while_writing(stack, tmp_path / "backups", writer_client)
        for client in (a, b):
            client.close()

        # 3.-5. wipe, refuse what is not a dump, restore, and the rows are back exactly.
        restore_into_fresh_stack(stack, dump, tmp_path)
        assert db_rows(stack, conversation) == before
        busy_rows = psql(stack, BUSY.format(c=busy))
        last_seq, count, top = busy_rows[0].split("|")
        assert last_seq == count == top, busy_rows  # one snapshot: counter and rows agree
        refused = make_fails(stack, "restore", f"FILE={dump}")
        assert "refusing to overwrite" in refused, refused[-800:]
        assert db_rows(stack, conversation) == before  # the refusal touched nothing

        # 6. the app serves them (the restored sessions still log in), and the sequence
        # continues: the next message is 7, once, at both clients.
        page = alice.get(f"{stack.base}/c/{conversation}", timeout=10).text
        assert re.findall(r'class="msg" data-seq="(\d+)"', page) == [str(i) for i in range(1, 7)]
        a, b = chat_client(stack, alice, conversation), chat_client(stack, bob, conversation)
        after = {a.send("after the restore")}
        a.wait_client_ids(after)
        b.wait_client_ids(after)
        assert list(a.seen) == list(b.seen) == [7]
        # What the page showed them: from here on the clients hold the whole conversation.
        history = {int(row.split("|")[2]): row.split("|")[3] for row in before["message"]}
        for client in (a, b):
            client.seen.update(history)
        rolling_upgrade(stack, alice, conversation, a, b, set(history.values()) | after)
    finally:
        for client in (a, b, writer_client):
            client.close()


def backup_while_writing(stack: Stack, folder: Path, client: ChatSocket) -> Path:
    writer = Writer(client)
    writer.start()
    # Writing before pg_dump starts (a dump can take 0.4 s, one writer's pause): the first
    # message stored, then the backup while the writer goes on.
    client.wait_for(lambda s: s.seen, timeout=15, what="the writer's first message stored")
    started = time.monotonic()
    out = make("backup", *stack.make_args, f"BACKUP_DIR={folder}", env=stack.env)
    TIMINGS.record(f"{stack.project}_backup", started)
    writer.stop.set()
    writer.join(timeout=10)
    assert writer.sent > 0
    dumps = sorted(folder.glob("parley-*.dump"))
    assert len(dumps) == 1 and re.fullmatch(r"parley-\d{8}T\d{6}Z\.dump", dumps[0].name), out
    assert dumps[0].read_bytes()[:5] == b"PGDMP"
    assert not list(folder.glob("*.partial"))
    return dumps[0]


def restore_into_fresh_stack(stack: Stack, dump: Path, tmp_path: Path) -> None:
    stack.make("wipe-volumes", timeout=300)
    assert not docker(
        "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}"
    )
    missing = make_fails(stack, "restore", f"FILE={tmp_path}/nothing.dump")
    assert "is not a readable file" in missing, missing[-800:]
    not_a_dump = tmp_path / "notes.dump"
    not_a_dump.write_text("not a dump\n")
    refused = make_fails(stack, "restore", f"FILE={not_a_dump}")
    assert "not a pg_dump custom-format archive" in refused, refused[-800:]
    started = time.monotonic()
    make("restore", *stack.make_args, f"FILE={dump}", env=stack.env, timeout=900)
    TIMINGS.record(f"{stack.project}_restore", started)


def rolling_upgrade(
    stack: Stack,
    session: requests.Session,
    conversation: int,
    a: ChatSocket,
    b: ChatSocket,
    earlier: set[str],
) -> None:
    """`make upgrade` replaces every web and ws container one at a time while both clients
    chat and a poller GETs the conversation page through nginx."""
    before = {i["Id"] for svc in ("web", "ws") for i in stack.containers()[svc]}
    statuses: collections.Counter[int | str] = collections.Counter()
    errors: list[str] = []
    stop = threading.Event()

    def get() -> int:
        return session.get(f"{stack.base}/c/{conversation}", timeout=30).status_code

    def poll() -> None:
        while not stop.wait(0.05):
            try:
                statuses[get()] += 1
            except requests.ConnectionError as exc:
                # Each roll step reloads nginx: the old workers close their idle keep-alive
                # connections, and a GET written onto one at that instant meets a closed
                # socket before any answer. Browsers retry such a request once on a new
                # connection (RFC 9112 9.3.1); so does this poller, and the retry must succeed.
                errors.append(repr(exc))
                try:
                    statuses[f"retried:{get()}"] += 1
                except requests.RequestException as again:
                    statuses[type(again).__name__] += 1
            except requests.RequestException as exc:
                statuses[type(exc).__name__] += 1

    def upgrade() -> None:
        started = time.monotonic()
        make("upgrade", *stack.make_args, env=stack.env, timeout=900)
        TIMINGS.record(f"{stack.project}_upgrade", started)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    closes_before = {client: len(client.closes) for client in (a, b)}
    try:
        sent = converse_during(upgrade, (a, b), (a, b), earlier)
    finally:
        stop.set()
        poller.join(timeout=40)
    # Both clients' sockets were on replaced ws containers: each was closed, by the drain
    # (1012) or by an old nginx worker at its shutdown timeout (no close frame), and came back.
    for client in (a, b):
        closes = client.closes[closes_before[client] :]
        assert closes and set(closes) <= {1012, None}, closes
    after = {i["Id"] for svc in ("web", "ws") for i in stack.containers()[svc]}
    services = stack.containers()
    assert not before & after, "some web/ws container was not replaced"
    assert len(services["web"]) == len(services["ws"]) == 2
    failed = sum(
        n for code, n in statuses.items() if not isinstance(code, int) and code != "retried:200"
    ) + sum(n for code, n in statuses.items() if isinstance(code, int) and code >= 500)
    print(f"upgrade: {sent} messages during it; GET statuses {dict(statuses)}; dropped {errors}")
    assert statuses[200] > 0 and failed <= UPGRADE_5XX_BUDGET, dict(statuses)
