"""chat.events: every event type, built by its one builder, checked against its schema, sent
through the real layer and read back by a receiver."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from chat import events

BUILT = {
    events.MESSAGE: lambda: events.message(
        conversation_id=7, seq=3, frame="<f>", publisher="p", preview="hi", sender="al", at=1.5
    ),
    events.TYPING: lambda: events.typing(conversation_id=7, user_id=2, frame="<t>"),
    events.PRESENCE: lambda: events.presence(
        conversation_id=7, changes=[[2, True], [3, False]], frame="<p>"
    ),
    events.MEMBERS: lambda: events.members(conversation_id=7, removed=[2], added=[]),
    events.SESSION_ENDED: lambda: events.session_ended(user_id=2, session_key="k" * 32),
    events.READ: lambda: events.read(user_id=2, conversation_id=7, seq=3),
    events.JOINED: lambda: events.joined(user_id=2, conversation_id=7),
    events.MENTION: lambda: events.mention(user_id=2, conversation_id=7, seq=3),
}


def test_every_event_type_has_a_builder_here():
    assert set(BUILT) == set(events.SCHEMAS) == events.CONVERSATION_EVENTS | events.USER_EVENTS


@pytest.mark.parametrize("kind", sorted(BUILT))
async def test_each_event_reaches_its_group_through_the_layer_as_built(kind):
    event = BUILT[kind]()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = events.group_of(event)
    await layer.group_add(group, channel)
    try:
        assert await events.broadcast(event)
        async with asyncio.timeout(5):
            received = await layer.receive(channel)
        assert events.parse(received) == event
    finally:
        await layer.group_discard(group, channel)


def test_conversation_events_go_to_the_conversation_and_user_events_to_the_user():
    assert events.group_of(BUILT[events.MESSAGE]()) == "chat.7"
    assert events.group_of(BUILT[events.READ]()) == "user.2"
    assert events.group_of(BUILT[events.MENTION]()) == "user.2"


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "chat.nope"},
        {"type": events.MESSAGE, "conversation_id": 1, "seq": "3", "frame": "x"},
        {"type": events.MESSAGE, "conversation_id": 1, "frame": "x"},
        {"type": events.MESSAGE, "conversation_id": True, "seq": 3, "frame": "x"},
        {"type": events.TYPING, "user_id": 2, "frame": None},
        {"type": events.MEMBERS, "conversation_id": 1, "removed": 2, "added": []},
        {"type": events.SESSION_ENDED, "session": 5},
        {"type": events.MENTION, "user_id": 2, "conversation_id": 7},
        {"type": events.MENTION, "conversation_id": 7, "seq": 3},
    ],
)
def test_an_event_that_does_not_match_its_schema_is_refused_and_logged(bad, caplog):
    assert events.parse(bad) is None
    assert "event refused" in caplog.text


def test_an_older_release_events_without_the_new_fields_are_read():
    """Rolling upgrades: the previous release's message and presence events."""
    old_message = {"type": events.MESSAGE, "conversation_id": 1, "seq": 2, "frame": "<f>", "t": 1.0}
    old_presence = {"type": events.PRESENCE, "changes": [[1, True]], "user_id": 1, "online": True}
    old_logout = {"type": events.SESSION_ENDED}
    for event in (old_message, old_presence, old_logout):
        assert events.parse(event) == event


def test_a_logout_names_its_session_without_its_key():
    event = events.session_ended(user_id=2, session_key="secret-session-key")
    assert "secret-session-key" not in repr(event)
    assert event["session"] == events.session_tag("secret-session-key")
    assert "session" not in events.session_ended(user_id=2, session_key=None)
