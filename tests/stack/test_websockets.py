"""Websockets through nginx across two daphne processes: broadcast over Redis, drain on SIGTERM,
recovery after SIGKILL, nginx reload. After every recovery each client holds every message
exactly once, in order, and the database agrees."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests

from tests.helpers.wsclient import CLOSE_ABNORMAL, ChatSocket
from tests.stack.harness import child_pids, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def connect(stack, conversation_id: int, cookies: dict, after: int | None = None) -> ChatSocket:
    return ChatSocket(stack.ws_base, stack.url, conversation_id, cookies).connect(after=after)


def daphne_of(stack, sock: ChatSocket) -> int:
    """Which daphne serves this socket: the one whose log has its handshake's request id."""
    assert sock.request_id, "nginx returns X-Request-ID on the websocket handshake"

    def find():
        for i, name in enumerate(stack.ws_names):
            if stack.find_log(
                name,
                lambda r: (
                    r.get("request_id") == sock.request_id and r.get("msg") == "websocket open"
                ),
            ):
                return str(i)
        return None

    return int(wait_until(find, timeout=10, what=f"websocket {sock.request_id} in a daphne log"))


def pair_on_two_daphnes(stack, conversation_id, cookies_a, cookies_b):
    """Connects a and b through nginx until they sit on different daphnes (least_conn puts
    the second on the idle one, unless nginx still counts a just-restarted daphne as failed)."""
    a = connect(stack, conversation_id, cookies_a)
    ia = daphne_of(stack, a)
    holder: list[ChatSocket] = []

    def second_elsewhere() -> bool:
        if holder:
            holder.pop().close()
        b = connect(stack, conversation_id, cookies_b)
        holder.append(b)
        return daphne_of(stack, b) != ia

    wait_until(second_elsewhere, timeout=15, interval=0.5, what="sockets on both daphnes")
    b = holder[0]
    return a, b, ia, daphne_of(stack, b)


def stored(stack, conversation_id: int) -> list[tuple[int, str]]:
    return [
        (seq, body)
        for seq, body in stack.sql(
            "SELECT seq, body FROM chat_message WHERE conversation_id = %s ORDER BY seq",
            [conversation_id],
        )
    ]


def converse(a: ChatSocket, b: ChatSocket, label: str, rounds: int = 3) -> None:
    for n in range(rounds):
        a.send(f"{label} a{n}")
        b.send(f"{label} b{n}")


def assert_complete(stack, conversation_id: int, *clients: ChatSocket, sent: list[str]) -> None:
    """Every client got sequences 1..len(sent) exactly once, in order, and the database holds
    each sent message exactly once under those sequences."""
    expected = list(range(1, len(sent) + 1))
    for client in clients:
        client.wait_seq(len(sent))
        client.quiet(0.3)  # whatever else is in flight (a duplicate would be)
        assert client.seqs == expected, "missing, duplicated or out of order"
    rows = stored(stack, conversation_id)
    assert [seq for seq, _ in rows] == expected
    assert sorted(body for _, body in rows) == sorted(sent)


def readyz(port: int) -> int | str:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
    except requests.Timeout:
        return "timeout"  # a slow answer on a busy machine; ask again
    except requests.ConnectionError:
        return "refused"


def test_users_on_different_daphnes_chat_through_redis(stack, room, cookies):
    conversation_id, (alice, bob, _) = room
    a, b, _, _ = pair_on_two_daphnes(stack, conversation_id, cookies(alice), cookies(bob))
    try:
        a.send("hello from the first daphne")
        b.wait_text("hello from the first daphne")
        b.send("hello back from the second")
        a.wait_text("hello back from the second")
        assert_complete(
            stack,
            conversation_id,
            a,
            b,
            sent=["hello from the first daphne", "hello back from the second"],
        )
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_a_daphne_mid_conversation_loses_and_duplicates_nothing(stack, room, cookies, sig):
    conversation_id, (alice, bob, _) = room
    a, b, ia, _ = pair_on_two_daphnes(stack, conversation_id, cookies(alice), cookies(bob))
    sent: list[str] = []
    try:
        converse(a, b, "before")
        sent += [f"before {w}{n}" for n in range(3) for w in "ab"]
        a.wait_seq(6)
        b.wait_seq(6)

        stack.send_signal(stack.ws_names[ia], sig)
        b.send("while a's daphne goes down")
        sent.append("while a's daphne goes down")
        if sig == signal.SIGTERM:
            # Draining: readiness fails at once, while the process still listens.
            port = stack.ws_port(ia)
            seen: list[int | str] = []
            wait_until(
                lambda: seen.append(readyz(port)) or seen[-1] in (503, "refused"),
                timeout=10,
                what="readyz to fail",
            )
            assert 503 in seen, seen  # before it stopped listening
            assert a.wait_close() == 1012
        else:
            assert a.wait_close() == CLOSE_ABNORMAL
        exit_code = stack.wait_ws_exit(ia, timeout=15)
        assert exit_code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)

        b.send("while a is away")
        sent.append("while a is away")
        b.wait_seq(8)
        a.reconnect()  # ?after=<last seq a rendered>; lands on the surviving daphne
        assert daphne_of(stack, a) != ia
        converse(a, b, "after")
        sent += [f"after {w}{n}" for n in range(3) for w in "ab"]
        assert_complete(stack, conversation_id, a, b, sent=sent)
    finally:
        a.close()
        b.close()
        stack.restart_ws(ia)


def test_nginx_reload_keeps_open_sockets_and_accepts_new_ones(stack, room, cookies):
    conversation_id, (alice, bob, carol) = room
    master = stack.procs["nginx"]["pid"]
    old_workers = child_pids(master)
    a, b, _, _ = pair_on_two_daphnes(stack, conversation_id, cookies(alice), cookies(bob))
    try:
        a.send("before reload")
        b.wait_seq(1)
        stack.reload_nginx()
        wait_until(lambda: child_pids(master) - old_workers, timeout=10, what="new nginx workers")
        # The old workers keep serving these sockets (until worker_shutdown_timeout).
        b.send("after reload")
        a.wait_seq(2)
        c = connect(stack, conversation_id, cookies(carol), after=0)
        try:
            c.wait_seq(2)  # replay through a new worker
            c.send("from a new worker")
            assert_complete(
                stack,
                conversation_id,
                a,
                b,
                c,
                sent=["before reload", "after reload", "from a new worker"],
            )
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_socket_lifetime_closes_with_1012_through_daphne(stack, room, cookies):
    """The app's own 1012 (CHAT_SOCKET_MAX_AGE) reaches the client as 1012 (stock daphne
    cannot send it), and the client resumes without loss."""
    conversation_id, (alice, bob, _) = room
    stack.restart_ws(1, env={"CHAT_SOCKET_MAX_AGE": "2"})
    try:
        direct = ChatSocket(
            f"ws://127.0.0.1:{stack.ws_port(1)}", stack.url, conversation_id, cookies(alice)
        ).connect()
        # Bob straight at the other daphne: through nginx he could land on the one whose
        # sockets live 2 s, and be closed himself before his second send.
        b = ChatSocket(
            f"ws://127.0.0.1:{stack.ws_port(0)}", stack.url, conversation_id, cookies(bob)
        ).connect()
        b.send("before the lifetime ends")
        direct.wait_seq(1)
        assert direct.wait_close(timeout=10) == 1012
        b.send("while reconnecting")
        direct.reconnect()
        direct.wait_seq(2)
        assert direct.seqs == [1, 2]
        direct.close()
        b.close()
    finally:
        stack.restart_ws(1)


def test_an_oversized_frame_is_refused_by_daphne(stack, room, cookies):
    conversation_id, (alice, _, _) = room
    a = connect(stack, conversation_id, cookies(alice))
    try:
        a.ws.send("x" * (64 * 1024 + 1))  # CHAT_MAX_FRAME_BYTES
        # autobahn fails the connection (failByDrop): cut, or 1009 "message too big".
        assert a.wait_close() in (CLOSE_ABNORMAL, 1009)
    finally:
        a.close()
    assert stored(stack, conversation_id) == []


def test_daphne_listens_with_a_deep_accept_queue(stack):
    """A reconnect storm after a restart queues in the kernel instead of being reset
    (Twisted's own default backlog is 50)."""
    import subprocess

    for port in stack.config.ws_ports:
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(out[2]) == min(4096, somaxconn)  # Send-Q of a listener: its backlog


def test_the_stock_runtime_serves_chat_and_drains_with_1012(stack, room, cookies):
    """PARLEY_RUNTIME=stock (docs/runtime.md): plain daphne, Channels' routers and
    channels-redis' own layer in one process, next to a tuned one: messages cross between
    them, and a SIGTERM still closes with 1012 (the close-code fix is on both runtimes)."""
    conversation_id, (alice, bob, _) = room
    stack.restart_ws(1, env={"PARLEY_RUNTIME": "stock"})
    stock = ChatSocket(
        f"ws://127.0.0.1:{stack.ws_port(1)}", stack.url, conversation_id, cookies(alice)
    )
    tuned = ChatSocket(
        f"ws://127.0.0.1:{stack.ws_port(0)}", stack.url, conversation_id, cookies(bob)
    )
    try:
        selected = [
            r for r in stack.log_records(stack.ws_names[1]) if r.get("logger") == "parley_runtime"
        ]
        assert selected[-1].get("runtime") == "stock", selected  # this start's line
        stock.connect()
        tuned.connect()
        stock.send("from the stock daphne")
        tuned.wait_text("from the stock daphne")
        tuned.send("from the tuned daphne")
        stock.wait_text("from the tuned daphne")
        # The sender's own copy travels on its own socket: it may reach the client after
        # the other daphne's copy (seen in CI), so it is waited for, not assumed.
        tuned.wait_seq(2, timeout=10)
        assert stock.last_seq == tuned.last_seq == 2
        assert stack.kill_ws(1, signal.SIGTERM) == 0
        assert stock.wait_close() == 1012
    finally:
        stock.close()
        tuned.close()
        stack.restart_ws(1)


def _answered(port: int, timeout: float) -> bool:
    """Whether daphne answers a plain HTTP request on its port within `timeout`."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            return s.recv(64).startswith(b"HTTP/1.1 200")
        except TimeoutError:
            return False


def test_daphne_stops_accepting_while_handshakes_wait_for_the_database(stack, room, cookies):
    """Backpressure in a reconnect storm: while WS_MAX_HANDSHAKES handshakes are in progress
    (here: waiting for the database), the process accepts no more connections (they wait in
    the kernel's accept queue, in order, at no cost) instead of taking each one only to
    refuse it; it accepts again as they finish, and every waiting handshake and connection
    is served."""
    import threading

    import psycopg

    conversation_id, members = room
    stack.restart_ws(
        1,
        env={
            "WS_MAX_HANDSHAKES": "2",
            "CHAT_DB_MAX_PENDING": "1",
            "CHAT_DB_CONNECT_WAIT_SECONDS": "30",
        },
    )
    port = stack.ws_port(1)
    sockets = [
        ChatSocket(f"ws://127.0.0.1:{port}", stack.url, conversation_id, cookies(user))
        for user in members
    ]
    lock = psycopg.connect(stack.config.database_url, autocommit=False)
    try:
        # Every handshake reads the session first: they queue behind this lock.
        lock.execute("LOCK TABLE django_session IN ACCESS EXCLUSIVE MODE")
        threads = [threading.Thread(target=s.connect, kwargs={"timeout": 60}) for s in sockets]
        for t in threads:
            t.start()
        wait_until(lambda: not _answered(port, 0.5), timeout=15, what="accepting paused")
        late = threading.Thread(target=lambda: late_answer.append(_answered(port, 30)))
        late_answer: list[bool] = []
        late.start()  # accepted by the kernel, waiting for daphne
        lock.rollback()  # the database answers again
        for t in threads:
            t.join(timeout=60)
        late.join(timeout=60)
        assert all(s.is_open for s in sockets)
        assert late_answer == [True]  # queued, then served: not refused
        assert _answered(port, 5)
        text = requests.get(stack.metrics_url, timeout=5).text
        assert any(
            line.startswith("parley_websocket_accept_pauses_total") and float(line.split()[-1]) >= 1
            for line in text.splitlines()
        ), "the pause is counted"
    finally:
        lock.close()
        for s in sockets:
            s.close()
        stack.restart_ws(1)
