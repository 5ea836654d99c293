"""chat.services.entries (and the changes of people in chat.services.conversations): every
change is an entry of the conversation's stream with its own number, stored with the
change, read back by the one reader of stored rows, and published once committed. Against
the real Postgres and the real channel layer."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import PermissionDenied

from chat import events, selectors, services
from chat.delivery import rows_after
from chat.models import Conversation, Message, MessageRevision
from tests.factories import make_conversation, make_user

pytestmark = pytest.mark.django_db


def _send(conv: Conversation, user, body: str) -> Message:
    return services.message_create(conversation_id=conv.pk, sender=user, body=body)[0]


def _last_seq(conv: Conversation) -> int:
    return Conversation.objects.values_list("last_seq", flat=True).get(pk=conv.pk)


def _stream(conv: Conversation) -> list[tuple[int, str]]:
    return list(
        Message.objects.filter(conversation=conv).order_by("seq").values_list("seq", "kind")
    )


def test_an_edit_is_an_entry_with_the_next_number_and_keeps_the_old_text():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    first = _send(conv, a, "helo")
    _send(conv, b, "hi")
    change = services.message_edit(
        conversation_id=conv.pk, editor=a, message_id=first.pk, body="  hello  "
    )
    first.refresh_from_db()
    assert (first.body, first.seq) == ("hello", 1) and first.edited_at is not None
    assert change.entry.seq == 3 and change.entry.target_id == first.pk
    assert _stream(conv) == [(1, "message"), (2, "message"), (3, "edit")]
    assert _last_seq(conv) == 3
    assert [(r.body, r.change) for r in MessageRevision.objects.filter(message=first)] == [
        ("helo", "edit")
    ]


def test_only_the_sender_edits_or_deletes_and_a_refusal_changes_nothing():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    mine = _send(conv, a, "mine")
    with pytest.raises(PermissionDenied):
        services.message_edit(conversation_id=conv.pk, editor=b, message_id=mine.pk, body="x")
    with pytest.raises(PermissionDenied):
        services.message_delete(conversation_id=conv.pk, user=b, message_id=mine.pk)
    mine.refresh_from_db()
    assert (mine.body, mine.deleted_at, _last_seq(conv)) == ("mine", None, 1)


def test_someone_no_longer_in_the_conversation_changes_nothing():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    mine = _send(conv, a, "mine")
    services.conversation_leave(conversation_id=conv.pk, user=a)
    before = _last_seq(conv)
    with pytest.raises(Conversation.DoesNotExist):
        services.message_edit(conversation_id=conv.pk, editor=a, message_id=mine.pk, body="x")
    with pytest.raises(Conversation.DoesNotExist):
        services.message_delete(conversation_id=conv.pk, user=a, message_id=mine.pk)
    assert _last_seq(conv) == before


def test_a_message_of_another_conversation_is_not_found():
    a, b = make_user(), make_user()
    one, other = make_conversation(a, b), make_conversation(a, b)
    there = _send(other, a, "there")
    with pytest.raises(Message.DoesNotExist):
        services.message_edit(conversation_id=one.pk, editor=a, message_id=there.pk, body="x")


@pytest.mark.parametrize(("age", "allowed"), [(59, True), (61, False)])
def test_edits_are_allowed_within_the_window(settings, age, allowed):
    settings.CHAT_EDIT_WINDOW_SECONDS = 60
    a = make_user()
    conv = make_conversation(a, make_user())
    mine = _send(conv, a, "old")
    sent = mine.created_at - datetime.timedelta(seconds=age)
    Message.objects.filter(pk=mine.pk).update(created_at=sent)
    if allowed:
        services.message_edit(conversation_id=conv.pk, editor=a, message_id=mine.pk, body="new")
        assert Message.objects.get(pk=mine.pk).body == "new"
    else:
        with pytest.raises(services.MessageRejected, match="1 minute after"):
            services.message_edit(conversation_id=conv.pk, editor=a, message_id=mine.pk, body="new")
        assert Message.objects.get(pk=mine.pk).body == "old"


@pytest.mark.parametrize(
    ("body", "reason"),
    [("   ", "cannot be empty"), ("x" * 4001, "too long"), ("nul\x00", "NUL")],
)
def test_a_bad_edit_is_refused_with_its_reason(body, reason):
    a = make_user()
    conv = make_conversation(a, make_user())
    mine = _send(conv, a, "text")
    with pytest.raises(services.MessageRejected, match=reason):
        services.message_edit(conversation_id=conv.pk, editor=a, message_id=mine.pk, body=body)
    assert _last_seq(conv) == 1


def test_an_edit_to_the_same_text_adds_nothing():
    a = make_user()
    conv = make_conversation(a, make_user())
    mine = _send(conv, a, "same")
    change = services.message_edit(
        conversation_id=conv.pk, editor=a, message_id=mine.pk, body="same"
    )
    assert change.entry is None and _last_seq(conv) == 1


def test_a_delete_leaves_a_tombstone_and_deleting_again_adds_nothing():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    mine = _send(conv, a, "regret")
    _send(conv, b, "after")
    change = services.message_delete(conversation_id=conv.pk, user=a, message_id=mine.pk)
    mine.refresh_from_db()
    assert (mine.body, mine.seq) == ("", 1) and mine.deleted_at is not None
    assert change.entry.seq == 3
    assert MessageRevision.objects.get(message=mine).body == "regret"
    again = services.message_delete(conversation_id=conv.pk, user=a, message_id=mine.pk)
    assert again.entry is None and _last_seq(conv) == 3
    with pytest.raises(services.MessageRejected, match="deleted"):
        services.message_edit(conversation_id=conv.pk, editor=a, message_id=mine.pk, body="x")
    # The page shows the tombstone in its place, not the entry that made it.
    assert [key[1] for key in selectors.history_keys(conv.pk)] == [1, 2]


def test_a_replay_reads_every_change_in_order_and_never_a_deleted_text():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    mine = _send(conv, a, "first draft")
    services.message_edit(
        conversation_id=conv.pk, editor=a, message_id=mine.pk, body="second draft"
    )
    rows = rows_after(conv.pk, 0, None, 100)
    assert [r.seq for r in rows] == [1, 2]
    assert "second draft" in rows[0].frame and "(edited)" in rows[0].frame
    assert 'data-update-seq="2" data-seq="1"' in rows[1].frame and "second draft" in rows[1].frame
    services.message_delete(conversation_id=conv.pk, user=a, message_id=mine.pk)
    rows = rows_after(conv.pk, 0, None, 100)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert all("draft" not in r.frame for r in rows)
    assert all("This message was deleted." in r.frame for r in rows)
    assert 'data-update-seq="3" data-seq="1"' in rows[2].frame


def test_the_list_preview_follows_an_edit_of_the_newest_message_only():
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    older = _send(conv, a, "older")
    newest = _send(conv, a, "newest")
    services.message_edit(conversation_id=conv.pk, editor=a, message_id=older.pk, body="o2")
    assert Conversation.objects.get(pk=conv.pk).last_message_preview == "newest"
    services.message_edit(conversation_id=conv.pk, editor=a, message_id=newest.pk, body="n2")
    assert Conversation.objects.get(pk=conv.pk).last_message_preview == "n2"
    services.message_delete(conversation_id=conv.pk, user=a, message_id=newest.pk)
    assert Conversation.objects.get(pk=conv.pk).last_message_preview == (
        "This message was deleted."
    )


def test_a_change_is_published_once_committed_with_its_number_and_frame(
    django_capture_on_commit_callbacks,
):
    a, b = make_user(), make_user()
    conv = make_conversation(a, b)
    older = _send(conv, a, "older")
    _send(conv, a, "newest")
    with django_capture_on_commit_callbacks() as callbacks:
        services.message_edit(
            conversation_id=conv.pk, editor=a, message_id=older.pk, body="changed"
        )
    assert callbacks, "published only once committed"

    async def publish_and_receive() -> dict:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        group = events.conversation_group(conv.pk)
        await layer.group_add(group, channel)
        try:
            for callback in callbacks:
                await sync_to_async(callback)()
            async with asyncio.timeout(5):
                return await layer.receive(channel)
        finally:
            await layer.group_discard(group, channel)

    event = events.parse(async_to_sync(publish_and_receive)())
    assert (event["type"], event["seq"]) == (events.MESSAGE, 3)
    assert 'data-update-seq="3"' in event["frame"] and "changed" in event["frame"]
    assert "preview" not in event  # an older message: the lists stay as they are


# --- people -----------------------------------------------------------------------------


def test_a_member_adds_people_who_then_see_the_whole_history():
    a, b, c = make_user("add-a"), make_user("add-b"), make_user("add-c")
    conv = make_conversation(a, b, title="team")
    _send(conv, a, "before c")
    added = services.participants_add(conversation_id=conv.pk, actor=a, usernames=["add-c"])
    assert added == ["add-c"]
    assert _stream(conv) == [(1, "message"), (2, "added")]
    assert Message.objects.get(conversation=conv, seq=2).body == "add-a added add-c"
    members = selectors.conversation_members(conv.pk)
    assert c.pk in members.names
    assert [key[1] for key in selectors.history_keys(conv.pk)] == [1, 2]
    # Already in: nothing more is added or numbered.
    assert services.participants_add(conversation_id=conv.pk, actor=b, usernames=["add-c"]) == []
    assert _last_seq(conv) == 2


def test_a_one_to_one_conversation_stays_between_its_two_people():
    a, b = make_user("one-a"), make_user("one-b")
    make_user("one-c")
    conv = services.conversation_start(creator=a, usernames=["one-b"])
    assert conv.is_direct
    with pytest.raises(services.PeopleRefused, match="1:1"):
        services.participants_add(conversation_id=conv.pk, actor=a, usernames=["one-c"])
    assert sorted(selectors.conversation_members(conv.pk).names) == sorted([a.pk, b.pk])


def test_someone_outside_cannot_add_people_and_unknown_names_are_named():
    a, b, outsider = make_user("out-a"), make_user("out-b"), make_user("out-x")
    conv = make_conversation(a, b, title="closed")
    with pytest.raises(Conversation.DoesNotExist):
        services.participants_add(conversation_id=conv.pk, actor=outsider, usernames=["out-x"])
    with pytest.raises(services.UnknownUsers) as refused:
        services.participants_add(conversation_id=conv.pk, actor=a, usernames=["nobody-here"])
    assert refused.value.usernames == ["nobody-here"]
    assert _last_seq(conv) == 0


@pytest.mark.parametrize(("count", "allowed"), [(2, True), (3, False)])
def test_people_added_at_once_are_bounded(settings, count, allowed):
    settings.CHAT_ADD_PEOPLE_LIMIT = 2
    a = make_user()
    conv = make_conversation(a, make_user(), title="bounded")
    names = [make_user().get_username() for _ in range(count)]
    if allowed:
        assert services.participants_add(conversation_id=conv.pk, actor=a, usernames=names)
    else:
        with pytest.raises(services.PeopleRefused, match="at most 2"):
            services.participants_add(conversation_id=conv.pk, actor=a, usernames=names)
        assert len(selectors.conversation_members(conv.pk).names) == 2


def test_leaving_and_being_removed_are_entries_of_the_stream():
    a, b, c = make_user("lv-a"), make_user("lv-b"), make_user("lv-c")
    conv = make_conversation(a, b, c, title="room")
    services.conversation_leave(conversation_id=conv.pk, user=c)
    services.participants_remove(conversation_id=conv.pk, user_ids=[b.pk], actor=a)
    entries = list(
        Message.objects.filter(conversation=conv).order_by("seq").values_list("kind", "body")
    )
    assert entries == [("left", "lv-c left"), ("removed", "lv-a removed lv-b")]
    frames = [r.frame for r in rows_after(conv.pk, 0, None, 10)]
    assert "lv-c left" in frames[0] and 'class="msg people"' in frames[0]


def test_a_change_with_the_channel_layer_down_is_stored_and_read_back(
    settings, django_capture_on_commit_callbacks
):
    """Redis down: the edit is stored and answered all the same (its broadcast fails,
    logged); pages read it from the database when they next heal or reconnect."""
    from channels.layers import channel_layers

    dead = {**settings.CHANNEL_LAYERS["default"]}
    dead["CONFIG"] = {**dead["CONFIG"], "hosts": ["redis://127.0.0.1:9/0"]}  # nothing there
    settings.CHANNEL_LAYERS = {"default": dead}
    channel_layers.backends.clear()
    a = make_user()
    conv = make_conversation(a, make_user())
    mine = _send(conv, a, "before")
    with django_capture_on_commit_callbacks(execute=True):
        change = services.message_edit(
            conversation_id=conv.pk, editor=a, message_id=mine.pk, body="after"
        )
    rows = rows_after(conv.pk, 1, None, 10)
    assert [r.seq for r in rows] == [change.entry.seq] and "after" in rows[0].frame


def test_a_change_is_not_news_to_whoever_had_read_everything_before_it():
    a, b, c = make_user(), make_user(), make_user()
    conv = make_conversation(a, b, c, title="news")
    older = _send(conv, a, "older")
    _send(conv, a, "newest")
    services.conversation_mark_read(conversation_id=conv.pk, user_id=b.pk, seq=2)
    services.conversation_mark_read(conversation_id=conv.pk, user_id=c.pk, seq=1)
    services.message_edit(conversation_id=conv.pk, editor=a, message_id=older.pk, body="o2")
    services.participants_add(
        conversation_id=conv.pk, actor=a, usernames=[make_user().get_username()]
    )
    unread = {row.conversation.pk: row.unread for row in selectors.conversation_list(b)}
    assert unread[conv.pk] == 0  # caught up before both changes: still caught up
    unread = {row.conversation.pk: row.unread for row in selectors.conversation_list(c)}
    assert unread[conv.pk] == 3  # one message behind: the changes after it count too
