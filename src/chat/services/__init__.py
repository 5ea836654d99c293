"""Writes (docs/architecture.md): consumers and views call these, never the models' save.

- `messages`: storing a message and publishing it.
- `entries`: edits and deletes of a message, and the entries a change of people adds.
- `conversations`: starting, adding and removing people, leaving, read markers, muting,
  history epochs.
- `mentions`: the mention markers a message moves, after it is published.
"""

from chat.services.conversations import (
    PeopleRefused,
    TooManyConversations,
    UnknownUsers,
    conversation_leave,
    conversation_mark_read,
    conversation_mute,
    conversation_new_epoch,
    conversation_start,
    conversations_new_epoch,
    participants_add,
    participants_remove,
    read_marker_move,
)
from chat.services.entries import Change, message_delete, message_edit
from chat.services.mentions import mentions_mark, mentions_notify
from chat.services.messages import (
    MessageRejected,
    Stored,
    check_storable_text,
    message_create,
    message_create_and_render,
    message_send,
    message_store,
    normalise_body,
)

__all__ = [
    "Change",
    "MessageRejected",
    "PeopleRefused",
    "Stored",
    "TooManyConversations",
    "UnknownUsers",
    "check_storable_text",
    "conversation_leave",
    "conversation_mark_read",
    "conversation_mute",
    "conversation_new_epoch",
    "conversation_start",
    "conversations_new_epoch",
    "message_create",
    "message_create_and_render",
    "message_delete",
    "message_edit",
    "message_send",
    "message_store",
    "mentions_mark",
    "mentions_notify",
    "normalise_body",
    "participants_add",
    "participants_remove",
    "read_marker_move",
]
