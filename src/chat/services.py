"""Writes. Every function here is one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from chat.models import Conversation, Message, Participant

User = get_user_model()


class MessageRejected(ValueError):
    """The message cannot be stored; `str(exc)` is safe to show to the sender."""


class UnknownUsers(ValueError):
    def __init__(self, usernames: list[str]) -> None:
        super().__init__(", ".join(usernames))
        self.usernames = usernames


def normalise_body(body: object) -> str:
    """Returns the text to store, or '' for an empty message (which is ignored)."""
    if not isinstance(body, str):
        raise MessageRejected("chat_message must be a string.")
    body = body.strip()
    limit = settings.CHAT_MAX_MESSAGE_LENGTH
    if len(body) > limit:
        raise MessageRejected(f"Message too long: {len(body)} characters, the limit is {limit}.")
    return body


_BUMP_SQL = (
    "UPDATE chat_conversation SET last_seq = last_seq + 1, last_message_at = %s, "
    "last_message_preview = %s, last_message_sender = %s WHERE id = %s RETURNING last_seq"
)


def message_create(
    *,
    conversation_id: int,
    sender: AbstractBaseUser,
    body: str,
    client_id: uuid.UUID | None = None,
) -> tuple[Message, bool]:
    """Stores a message with the conversation's next sequence number.

    Returns (message, created). A retried send with the same client_id returns the stored
    message with created=False, so it is stored and broadcast once.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            # The UPDATE takes the conversation's row lock: concurrent senders queue here,
            # and a rolled-back transaction gives its number back, so there are no gaps.
            with connection.cursor() as cursor:
                cursor.execute(_BUMP_SQL, [now, body[:140], sender.get_username(), conversation_id])
                row = cursor.fetchone()
            if row is None:
                raise Conversation.DoesNotExist(conversation_id)
            message = Message.objects.create(
                conversation_id=conversation_id,
                sender=sender,
                seq=row[0],
                client_id=client_id,
                body=body,
                created_at=now,
            )
    except IntegrityError:
        if client_id is None:
            raise
        existing = (
            Message.objects.select_related("sender")
            .filter(conversation_id=conversation_id, sender=sender, client_id=client_id)
            .first()
        )
        if existing is None:
            raise
        return existing, False
    message.sender = sender  # already loaded: rendering needs no extra query
    return message, True


@transaction.atomic
def conversation_start(
    *, creator: AbstractBaseUser, usernames: Iterable[str], title: str = ""
) -> Conversation:
    """Starts a conversation between the creator and the named users.

    A 1:1 conversation that already exists between the same two people is reused.
    """
    wanted = {u.strip() for u in usernames if u.strip()} - {creator.get_username()}
    if not wanted:
        raise UnknownUsers([])
    users = list(User.objects.filter(username__in=wanted, is_active=True))
    found = {u.get_username() for u in users}
    missing = sorted(wanted - found)
    if missing:
        raise UnknownUsers(missing)
    if len(users) == 1 and not title:
        other = users[0]
        shared = Participant.objects.filter(
            user=other,
            conversation__title="",
            conversation__in=Participant.objects.filter(user=creator).values("conversation"),
        ).values("conversation")
        pair = (
            Participant.objects.filter(conversation__in=shared)
            .values("conversation")
            .annotate(n=Count("id"))
            .filter(n=2)
            .order_by("conversation")
            .values_list("conversation", flat=True)
            .first()
        )
        existing = Conversation.objects.filter(pk=pair).first() if pair else None
        if existing is not None:
            return existing
    conversation = Conversation.objects.create(title=title[:200])
    Participant.objects.bulk_create(
        [Participant(conversation=conversation, user=u) for u in [creator, *users]]
    )
    return conversation


def conversation_mark_read(*, conversation_id: int, user_id: int, seq: int) -> int:
    """Moves the read marker forward (never back). Returns rows changed (0 or 1)."""
    return Participant.objects.filter(
        conversation_id=conversation_id, user_id=user_id, last_read_seq__lt=seq
    ).update(last_read_seq=seq)
