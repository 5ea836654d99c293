"""chat.services: the writes, against the real Postgres."""

from __future__ import annotations

import uuid

import pytest

from chat import services
from chat.models import Message, Participant
from tests.factories import make_conversation, make_user

pytestmark = pytest.mark.django_db


def test_messages_take_consecutive_sequences_and_a_client_id_stores_once():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    cid = uuid.uuid4()
    first, created = services.message_create(conversation_id=conv.pk, sender=a, body="one")
    assert created and first.seq == 1
    second, created = services.message_create(
        conversation_id=conv.pk, sender=b, body="two", client_id=cid
    )
    assert created and second.seq == 2
    again, created = services.message_create(
        conversation_id=conv.pk, sender=b, body="two", client_id=cid
    )
    assert not created and again.pk == second.pk  # a resend after a lost confirmation
    assert list(Message.objects.filter(conversation=conv).values_list("seq", flat=True)) == [1, 2]


def test_create_and_render_gives_the_one_frame_every_recipient_gets():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    cid = uuid.uuid4()
    seq, frame, created, *_ = services.message_create_and_render(
        conv.pk, a.pk, a.get_username(), "<b>hi</b>", cid
    )
    assert (seq, created) == (1, True)
    assert frame.startswith('<div hx-swap-oob="beforeend:#messages"><article id="msg-')
    assert f'data-client-id="{cid}"' in frame and "&lt;b&gt;hi&lt;/b&gt;" in frame
    # The same send again (the page retried): the stored message, not a second one.
    assert services.message_create_and_render(conv.pk, a.pk, a.get_username(), "x", cid)[:3] == (
        1,
        frame,
        False,
    )


def test_bodies_are_normalised_and_unstorable_text_refused():
    assert services.normalise_body("  hi \n") == "hi"
    with pytest.raises(services.MessageRejected, match="NUL"):
        services.normalise_body("nul \x00 inside")


def test_read_markers_only_move_forward():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    for body in "abc":
        services.message_create(conversation_id=conv.pk, sender=a, body=body)
    services.conversation_mark_read(conversation_id=conv.pk, user_id=b.pk, seq=3)
    services.conversation_mark_read(conversation_id=conv.pk, user_id=b.pk, seq=1)
    assert Participant.objects.get(conversation=conv, user=b).last_read_seq == 3


def test_message_create_is_one_statement_on_postgres():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    with CaptureQueriesContext(connection) as ctx:
        message, created = services.message_create(conversation_id=conv.pk, sender=a, body="x")
    # inside the test's transaction, atomic() adds SAVEPOINT/RELEASE instead of BEGIN/COMMIT
    statements = [
        q["sql"].split()[0]
        for q in ctx.captured_queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))
    ]
    assert statements == ["WITH"]  # UPDATE ... RETURNING feeding the INSERT: one round trip
    assert created and message.seq == 1


@pytest.mark.django_db(transaction=True)
def test_a_websocket_send_is_one_statement_with_no_transaction_around_it():
    """The send path's store is one round trip: no BEGIN, SAVEPOINT, RELEASE or COMMIT
    around the statement (each is another round trip, on the one thread every send of a
    process waits for)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    with CaptureQueriesContext(connection) as ctx:
        seq, _frame, created, *_ = services.message_create_and_render(
            conv.pk, a.pk, a.get_username(), "hi", uuid.uuid4()
        )
    assert [q["sql"].split()[0] for q in ctx.captured_queries] == ["WITH"]
    assert (seq, created) == (1, True)
    assert connection.get_autocommit() and not connection.in_atomic_block


@pytest.mark.django_db(transaction=True)
def test_a_send_on_a_connection_the_server_dropped_is_stored_once_on_a_fresh_one():
    from django.db import connection, connections

    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    # Another connection ends this one's server process, as a Postgres restart does.
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    cid = uuid.uuid4()
    seq, _frame, created, *_ = services.message_create_and_render(
        conv.pk, a.pk, a.get_username(), "after the restart", cid
    )
    assert (seq, created) == (1, True)
    assert list(Message.objects.filter(conversation=conv).values_list("body", flat=True)) == [
        "after the restart"
    ]


# --- mentions and muting ----------------------------------------------------------------------


def _markers(conversation) -> dict[str, int]:
    return dict(
        Participant.objects.filter(conversation=conversation).values_list(
            "user__username", "last_mention_seq"
        )
    )


def test_a_mention_marks_the_named_members_only_and_never_moves_back():
    ann, bob, cy = make_user("ann-mention"), make_user("bob-mention"), make_user("cy-mention")
    outsider = make_user("out-mention")
    conversation = make_conversation(ann, bob, cy)
    marked = services.mentions_mark(
        conversation_id=conversation.pk,
        sender_id=ann.pk,
        names=["bob-mention", "out-mention", "nobody-at-all", "ann-mention", "bob-mention"],
        seq=5,
    )
    assert marked == [bob.pk]  # not the outsider, nobody unknown, not the sender herself
    assert _markers(conversation) == {"ann-mention": 0, "bob-mention": 5, "cy-mention": 0}
    assert not Participant.objects.filter(user=outsider).exists()
    # An older message's mention (a late write) never moves it back; a newer one moves it.
    assert (
        services.mentions_mark(
            conversation_id=conversation.pk, sender_id=ann.pk, names=["bob-mention"], seq=3
        )
        == []
    )
    assert _markers(conversation)["bob-mention"] == 5
    assert services.mentions_mark(
        conversation_id=conversation.pk,
        sender_id=cy.pk,
        names=["bob-mention", "ann-mention"],
        seq=9,
    ) == sorted([ann.pk, bob.pk])
    assert (
        services.mentions_mark(conversation_id=conversation.pk, sender_id=ann.pk, names=[], seq=10)
        == []
    )


def test_a_mention_is_one_statement_with_a_bounded_list_of_names(django_assert_num_queries):
    from chat.services.mentions import MENTIONS_MAX

    ann, bob = make_user("ann-one-mention"), make_user("bob-one-mention")
    conversation = make_conversation(ann, bob)
    with django_assert_num_queries(1):
        assert services.mentions_mark(
            conversation_id=conversation.pk, sender_id=ann.pk, names=["bob-one-mention"], seq=1
        ) == [bob.pk]
    # A body naming hundreds: only the first MENTIONS_MAX distinct names are looked up.
    names = [f"name{i}" for i in range(200)] + ["bob-one-mention"]
    with django_assert_num_queries(1) as captured:
        marked = services.mentions_mark(
            conversation_id=conversation.pk, sender_id=ann.pk, names=names, seq=2
        )
    assert marked == []
    assert captured.captured_queries[0]["sql"].count("'name") == MENTIONS_MAX


def test_muting_is_per_person_and_only_for_participants():
    ann, bob, out = make_user(), make_user(), make_user()
    conversation = make_conversation(ann, bob)
    assert services.conversation_mute(conversation_id=conversation.pk, user=ann, muted=True)
    assert not services.conversation_mute(conversation_id=conversation.pk, user=out, muted=True)
    muted = dict(
        Participant.objects.filter(conversation=conversation).values_list("user_id", "muted")
    )
    assert muted == {ann.pk: True, bob.pk: False}
    services.conversation_mute(conversation_id=conversation.pk, user=ann, muted=False)
    assert not Participant.objects.get(conversation=conversation, user=ann).muted
