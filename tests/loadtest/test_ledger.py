"""The load test's own logic: reading the server's fragments, and the completeness check.

These run without a stack (and without importing locust, which monkey-patches the process).
"""

from __future__ import annotations

import uuid

import pytest

from chat import fragments
from chat.services import message_create
from loadtest import protocol
from loadtest.ledger import Ledger, check, percentile
from loadtest.users import select_users
from tests.factories import make_conversation, make_user


@pytest.mark.django_db
def test_parses_the_fragment_the_server_renders():
    alice, bob = make_user("alice"), make_user("bob")
    conversation = make_conversation(alice, bob)
    message_id, body, sent_ns = protocol.new_message()
    message, _ = message_create(
        conversation_id=conversation.pk,
        sender=alice,
        body=body,
        client_id=uuid.UUID(hex=message_id),
    )
    other, _ = message_create(conversation_id=conversation.pk, sender=bob, body='<b>"hi" & bye</b>')
    frame = fragments.ws_message(fragments.message_html(message)) + fragments.ws_message(
        fragments.message_html(other)
    )

    first, second = protocol.parse_frame(frame).deliveries
    assert (first.seq, first.sender_id, first.message_id, first.sent_ns) == (
        message.seq,
        alice.pk,
        message_id,
        sent_ns,
    )
    assert protocol.client_id_hex(first.client_id) == message_id
    assert (second.seq, second.body, second.message_id) == (other.seq, '<b>"hi" & bye</b>', None)


def test_parses_errors_and_presence():
    cid = str(uuid.uuid4())
    frame = protocol.parse_frame(
        fragments.error_html("You are sending messages too fast.", client_id=cid)
        + fragments.presence_html(7, "amy", True)
        + fragments.presence_html(8, "bo", False)
    )
    assert frame.errors == [(cid, "You are sending messages too fast.")]
    assert frame.presence == [(7, True), (8, False)]
    assert frame.deliveries == []


def test_payload_is_what_htmx_sends():
    message_id, body, _ = protocol.new_message()
    payload = protocol.send_payload(body, message_id, 12)
    import json

    data = json.loads(payload)
    assert data["chat_message"] == body
    assert uuid.UUID(data["client_id"]).hex == message_id
    assert data["HEADERS"]["HX-Request"] == "true"


def _run(deliver: dict[str, list[tuple[str, int]]], sent: list[tuple[str, str]]) -> Ledger:
    """A ledger for room 1 with members a, b, c: `sent` is [(message id, sender)],
    `deliver` maps recipient -> [(message id, seq)] in arrival order, 5 ms after sending."""
    ledger = Ledger()
    for member in "abc":
        ledger.add_recipient(member, 1)
    for i, (message_id, sender) in enumerate(sent):
        ledger.record_sent(message_id, 1, sender, 1_000_000_000 + i * 10_000_000)
    for recipient, rows in deliver.items():
        for message_id, seq in rows:
            sent_ns = ledger.sent[message_id][2] if message_id in ledger.sent else 0
            ledger.record_delivery(recipient, message_id, seq, sent_ns + 5_000_000)
    return ledger


SENT = [("m1", "a"), ("m2", "b"), ("m3", "c")]
ALL = [("m1", 1), ("m2", 2), ("m3", 3)]


def test_a_complete_run_passes():
    report = check(_run({"a": ALL, "b": ALL, "c": ALL}, SENT), p99_threshold_ms=100)
    assert report.ok, report.failures
    summary = report.summary()
    assert (summary["expected"], summary["received"], summary["lost"]) == (9, 9, 0)
    assert summary["fanout_p99_ms"] == pytest.approx(5.0)
    assert len(report.fanout_ms) == 6  # each sender's own echo is its ack, not fan-out


@pytest.mark.parametrize(
    ("b_got", "failure"),
    [
        ([("m1", 1), ("m3", 3)], "1 deliveries lost"),
        ([("m1", 1), ("m2", 2), ("m2", 2), ("m3", 3)], "1 deliveries duplicated"),
        ([("m2", 2), ("m1", 1), ("m3", 3)], "1 deliveries out of order"),
    ],
)
def test_loss_duplicates_and_reordering_fail_the_run(b_got, failure):
    report = check(_run({"a": ALL, "b": b_got, "c": ALL}, SENT), p99_threshold_ms=100)
    assert report.failures == [failure]
    bad = [r.recipient for r in report.rows if not r.ok]
    assert bad == ["b"]
    assert "! b (room 1)" in report.table()


def test_slow_fanout_fails_the_run():
    report = check(_run({"a": ALL, "b": ALL, "c": ALL}, SENT), p99_threshold_ms=4)
    assert report.failures == ["p99 fan-out 5.0 ms above 4 ms"]


def test_rejected_messages_are_not_expected_but_fail_the_run():
    ledger = _run({"a": ALL, "b": ALL, "c": ALL}, [*SENT, ("m4", "a")])
    ledger.record_rejected("m4", "You are sending messages too fast.")
    report = check(ledger, p99_threshold_ms=100)
    assert report.total("lost") == 0
    assert report.failures == ["1 messages rejected by the server"]


def test_a_run_that_sent_nothing_fails():
    (failure,) = check(_run({}, []), p99_threshold_ms=100).failures
    assert failure.startswith("no message was sent (sending starts once every user is online")
    assert check(Ledger(), p99_threshold_ms=100).failures == [
        "no recipient connected",
        "no message was sent",
    ]


def test_ledgers_from_workers_merge_into_one_check():
    one = _run({"a": ALL}, SENT)
    two = Ledger()
    two.merge(
        {
            **Ledger().to_dict(),
            "recipients": {"b": 1},
            "deliveries": {"b": [("m1", 1, 1_005_000_000), ("m2", 2, 1_015_000_000)]},
        }
    )
    one.merge(two.to_dict())
    report = check(one, p99_threshold_ms=100)
    assert [(r.recipient, r.lost) for r in report.rows] == [("a", 0), ("b", 1), ("c", 3)]


def test_percentile_is_nearest_rank():
    assert percentile([], 99) is None
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_select_users_takes_rooms_and_members_in_file_order():
    records = [
        {"username": f"u{r}{m}", "password": "p", "conversation": 10 + r}
        for r in range(3)
        for m in range(4)
    ]
    chosen = select_users(records, rooms=2, members=3)
    assert [u["username"] for u in chosen] == ["u00", "u01", "u02", "u10", "u11", "u12"]
    assert {u["room_size"] for u in chosen} == {3}
    with pytest.raises(ValueError, match="only 3 rooms"):
        select_users(records, rooms=4, members=0)
    with pytest.raises(ValueError, match="lacks"):
        select_users([{"username": "x"}], rooms=0, members=0)


def test_fanout_p99_is_also_given_per_second_of_sending():
    """A tail that is one burst (a stall) shows in one second; a spread tail in all."""
    ledger = Ledger()
    for member in "ab":
        ledger.add_recipient(member, 1)
    start = 1_000_000_000
    for i, (offset_ms, latency_ms) in enumerate([(0, 5), (500, 7), (2100, 300), (2600, 9)]):
        sent_ns = start + offset_ms * 1_000_000
        ledger.record_sent(f"m{i}", 1, "a", sent_ns)
        ledger.record_delivery("b", f"m{i}", i + 1, sent_ns + latency_ms * 1_000_000)
    assert check(ledger, p99_threshold_ms=100).summary()["fanout_p99_ms_by_second"] == [
        7.0,
        None,
        300.0,
    ]


def test_users_that_never_connected_are_named_and_left_out():
    ledger = _run({"a": ALL, "b": ALL, "c": ALL}, SENT)
    ledger.record_not_connected("d", "login refused: HTTP 200, the login form again")
    report = check(ledger, p99_threshold_ms=100, users=["a", "b", "c", "d", "e"], min_connected=0.5)
    assert report.ok, report.failures
    assert report.not_connected == {
        "d": "login refused: HTTP 200, the login form again",
        "e": "did not connect before the run ended",
    }
    assert [r.recipient for r in report.rows] == ["a", "b", "c"]  # d and e expect nothing
    summary = report.summary()
    assert (summary["users"], summary["recipients"], summary["lost"]) == (5, 3, 0)
    assert summary["not_connected"]["d"].startswith("login refused")
    table = report.table()
    assert "not connected: 2 of 5 users" in table
    assert "  - d: login refused: HTTP 200" in table
    assert "users connected 3 of 5" in table


def test_too_few_connected_fails_the_run():
    ledger = _run({"a": ALL, "b": ALL, "c": ALL}, SENT)
    users = ["a", "b", "c", "d", "e", "f", "g"]
    report = check(ledger, p99_threshold_ms=100, users=users, min_connected=0.5)
    assert report.failures == ["only 3 of 7 users connected (--min-connected 0.5 needs 4)"]
    assert check(ledger, p99_threshold_ms=100, users=users[:6], min_connected=0.5).ok


def test_the_connected_users_still_need_every_message():
    ledger = _run({"a": ALL, "b": ALL[:2], "c": ALL}, SENT)
    ledger.record_not_connected("d", "login failed 8 times over 60 s, last: HTTP 503")
    report = check(ledger, p99_threshold_ms=100, users=["a", "b", "c", "d"], min_connected=0.5)
    assert report.failures == ["1 deliveries lost"]
    assert "  - d: login failed 8 times" in report.table()


def test_sockets_closed_for_good_and_server_errors_fail_the_run():
    ledger = _run({"a": ALL, "b": ALL, "c": ALL}, SENT)
    ledger.closed.append("b")
    ledger.server_errors.append("Something went wrong.")
    assert check(ledger, p99_threshold_ms=100).failures == [
        "1 sockets closed for good during the run",
        "1 error frames from the server",
    ]


def test_not_connected_users_merge_from_workers():
    one, two = Ledger(), Ledger()
    two.record_not_connected("x", "websocket refused: HTTP 403")
    one.merge(two.to_dict())
    assert one.not_connected == {"x": "websocket refused: HTTP 403"}
