"""Entries of a conversation's stream that are not a new message: edits and deletes of a
message, and changes of people ("alice added bob"). Each takes the conversation's next
sequence number in the transaction that makes the change, is stored before it is shown,
and is published once that transaction commits; a page that missed it reads it after
`?after=` like any message (chat.delivery)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from chat import events, fragments
from chat.models import Conversation, Message, MessageRevision, Participant
from chat.services.messages import MessageRejected, normalise_body
from parley.layer import PROCESS

# Who published an entry stored by a request (the PeerDelays of chat.admission keep each
# publisher's own fastest delivery; every web process has the same clock).
PUBLISHER = f"web-{PROCESS}"
DELETED_PREVIEW = "This message was deleted."


@dataclass(frozen=True)
class Change:
    """What an edit or a delete stored: the message as it is now and the entry saying so."""

    message: Message
    entry: Message | None  # None: nothing changed (an edit to the same text)


def locked_conversation(conversation_id: int, user_id: int) -> Conversation:
    """The conversation, its row locked (the next sequence number is ours until commit), if
    `user_id` is one of its participants; else Conversation.DoesNotExist."""
    member = Participant.objects.filter(conversation_id=OuterRef("pk"), user_id=user_id)
    conversation = (
        Conversation.objects.select_for_update()
        .filter(pk=conversation_id)
        .filter(Exists(member))
        .first()
    )
    if conversation is None:
        raise Conversation.DoesNotExist(conversation_id)
    return conversation


def entry_append(
    conversation: Conversation,
    *,
    kind: str,
    sender: AbstractBaseUser,
    body: str,
    target: Message | None = None,
    preview: str | None = None,
) -> Message:
    """Stores an entry with the conversation's next number (`conversation` locked by the
    caller's transaction) and publishes it once that commits. `preview`: the conversation
    list's text changes to it (the newest message was edited or deleted); None: the list's
    row stays as it is."""
    conversation.last_seq += 1
    fields = ["last_seq"]
    if preview is not None:
        conversation.last_message_preview = preview[:140]
        fields.append("last_message_preview")
    conversation.save(update_fields=fields)
    entry = Message.objects.create(
        conversation=conversation,
        sender=sender,
        seq=conversation.last_seq,
        kind=kind,
        body=body,
        target=target,
    )
    # A change is not news: whoever had read everything before it has read it too (their
    # unread count stays 0), and their open lists are told when the row moves in them.
    caught_up = Participant.objects.filter(conversation=conversation, last_read_seq=entry.seq - 1)
    readers = list(caught_up.values_list("user_id", flat=True))
    caught_up.update(last_read_seq=entry.seq)
    read = [
        events.read(user_id=user_id, conversation_id=conversation.pk, seq=entry.seq)
        for user_id in (readers if preview is not None else [])
    ]
    event = events.message(
        conversation_id=conversation.pk,
        seq=entry.seq,
        frame=fragments.ws_message(fragments.entry_html(entry)),
        publisher=PUBLISHER,
        preview=conversation.last_message_preview,
        sender=conversation.last_message_sender,
        at=conversation.last_message_at.timestamp() if conversation.last_message_at else 0.0,
        listed=preview is not None,
    )
    transaction.on_commit(lambda: [events.broadcast_sync(e) for e in [event, *read]])
    return entry


def _own_message(conversation_id: int, message_id: int, user: AbstractBaseUser) -> Message:
    """The message, locked, if `user` sent it. PermissionDenied if someone else did;
    Message.DoesNotExist if there is none (or it is not a message)."""
    message = (
        Message.objects.select_for_update()
        .select_related("sender")
        .filter(pk=message_id, conversation_id=conversation_id, kind=Message.MESSAGE, sender=user)
        .first()
    )
    if message is not None:
        return message
    if Message.objects.filter(
        pk=message_id, conversation_id=conversation_id, kind=Message.MESSAGE
    ).exists():
        raise PermissionDenied("Only its sender can change a message.")
    raise Message.DoesNotExist(message_id)


def _duration(seconds: int) -> str:
    if seconds % 60 or not seconds:
        return f"{seconds} second{'s' * (seconds != 1)}"
    return f"{seconds // 60} minute{'s' * (seconds != 60)}"


def _is_newest(message: Message) -> bool:
    """The conversation list previews this message (no message came after it)."""
    return not Message.objects.filter(
        conversation_id=message.conversation_id, kind=Message.MESSAGE, seq__gt=message.seq
    ).exists()


@transaction.atomic
def message_edit(
    *, conversation_id: int, editor: AbstractBaseUser, message_id: int, body: object
) -> Change:
    """Replaces the text of the editor's own message, within CHAT_EDIT_WINDOW_SECONDS of
    sending it; the previous text is kept for moderators (MessageRevision). Raises
    MessageRejected (a reason to show), PermissionDenied (not the sender's),
    Message.DoesNotExist and Conversation.DoesNotExist (not a participant)."""
    text = normalise_body(body)
    if not text:
        raise MessageRejected("An edit cannot be empty: delete the message instead.")
    conversation = locked_conversation(conversation_id, editor.pk)
    message = _own_message(conversation_id, message_id, editor)
    if message.deleted_at is not None:
        raise MessageRejected("This message was deleted.")
    now = timezone.now()
    window = settings.CHAT_EDIT_WINDOW_SECONDS
    if now - message.created_at > datetime.timedelta(seconds=window):
        raise MessageRejected(f"Messages can be edited for {_duration(window)} after sending.")
    if text == message.body:
        return Change(message, None)
    entry = entry_append(
        conversation,
        kind=Message.EDIT,
        sender=editor,
        body=text,
        target=message,
        preview=text if _is_newest(message) else None,
    )
    MessageRevision.objects.create(
        message=message, body=message.body, replaced_at=entry.created_at, change=Message.EDIT
    )
    Message.objects.filter(pk=message.pk, sender=editor, deleted_at=None).update(
        body=text, edited_at=entry.created_at
    )
    message.body, message.edited_at = text, entry.created_at
    return Change(message, entry)


@transaction.atomic
def message_delete(*, conversation_id: int, user: AbstractBaseUser, message_id: int) -> Change:
    """Deletes the user's own message: its row stays, emptied (a tombstone keeps the
    numbers gapless), its text kept for moderators. Deleting it again changes nothing.
    Raises PermissionDenied, Message.DoesNotExist and Conversation.DoesNotExist."""
    conversation = locked_conversation(conversation_id, user.pk)
    message = _own_message(conversation_id, message_id, user)
    if message.deleted_at is not None:
        return Change(message, None)
    entry = entry_append(
        conversation,
        kind=Message.DELETE,
        sender=user,
        body="",
        target=message,
        preview=DELETED_PREVIEW if _is_newest(message) else None,
    )
    MessageRevision.objects.create(
        message=message, body=message.body, replaced_at=entry.created_at, change=Message.DELETE
    )
    Message.objects.filter(pk=message.pk, sender=user).update(body="", deleted_at=entry.created_at)
    message.body, message.deleted_at = "", entry.created_at
    return Change(message, entry)
