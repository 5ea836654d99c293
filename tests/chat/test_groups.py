"""chat.groups: the group names every process must agree on."""

from __future__ import annotations

from chat.groups import conversation_group, conversation_id_of, user_group


def test_group_names_and_back():
    assert conversation_group(42) == "chat.42"
    assert user_group(7) == "user.7"
    assert conversation_id_of(conversation_group(42)) == 42
    assert conversation_id_of(user_group(7)) is None
    assert conversation_id_of("chat.x") is None
