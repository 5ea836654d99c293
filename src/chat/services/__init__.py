"""Writes (docs/architecture.md): consumers and views call these, never the models' save.

- `messages`: storing a message and publishing it.
- `conversations`: starting, leaving, removing people, read markers, history epochs.
"""

from chat.services.conversations import (
    TooManyConversations,
    UnknownUsers,
    conversation_leave,
    conversation_mark_read,
    conversation_new_epoch,
    conversation_start,
    conversations_new_epoch,
    participants_remove,
    read_marker_move,
)
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
    "MessageRejected",
    "Stored",
    "TooManyConversations",
    "UnknownUsers",
    "check_storable_text",
    "conversation_leave",
    "conversation_mark_read",
    "conversation_new_epoch",
    "conversation_start",
    "conversations_new_epoch",
    "message_create",
    "message_create_and_render",
    "message_send",
    "message_store",
    "normalise_body",
    "participants_remove",
    "read_marker_move",
]
