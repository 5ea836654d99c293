"""Reads. Keyset pagination by sequence number: no OFFSET scans."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F

from chat.models import Conversation, Message, Participant


@dataclass(frozen=True)
class ConversationRow:
    conversation: Conversation
    title: str
    unread: int
    last_read_seq: int


def conversation_title(conversation: Conversation, names: list[str], viewer: str) -> str:
    if conversation.title:
        return conversation.title
    others = [n for n in names if n != viewer]
    return ", ".join(others) or viewer


def _member_names(conversation_ids: list[int]) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {cid: [] for cid in conversation_ids}
    rows = (
        Participant.objects.filter(conversation_id__in=conversation_ids)
        .order_by("user__username")
        .values_list("conversation_id", "user__username")
    )
    for cid, name in rows:
        names[cid].append(name)
    return names


def conversation_list(user: AbstractBaseUser) -> list[ConversationRow]:
    """Every conversation the user takes part in, newest activity first, with unread counts."""
    memberships = list(
        Participant.objects.filter(user=user)
        .select_related("conversation")
        .order_by(
            F("conversation__last_message_at").desc(nulls_last=True),
            "-conversation__created_at",
            "-conversation_id",
        )
    )
    names = _member_names([p.conversation_id for p in memberships])
    viewer = user.get_username()
    return [
        ConversationRow(
            conversation=p.conversation,
            title=conversation_title(p.conversation, names[p.conversation_id], viewer),
            unread=max(p.conversation.last_seq - p.last_read_seq, 0),
            last_read_seq=p.last_read_seq,
        )
        for p in memberships
    ]


def conversation_row(user_id: int, username: str, conversation_id: int) -> ConversationRow | None:
    """One row of the list, as `conversation_list` would show it to this user."""
    p = (
        Participant.objects.filter(user_id=user_id, conversation_id=conversation_id)
        .select_related("conversation")
        .first()
    )
    if p is None:
        return None
    names = _member_names([conversation_id])[conversation_id]
    return ConversationRow(
        conversation=p.conversation,
        title=conversation_title(p.conversation, names, username),
        unread=max(p.conversation.last_seq - p.last_read_seq, 0),
        last_read_seq=p.last_read_seq,
    )


def conversation_for_participant(user_id: int, conversation_id: int) -> Conversation | None:
    return Conversation.objects.filter(id=conversation_id, participant__user_id=user_id).first()


def conversation_history(
    conversation_id: int, *, before_seq: int | None = None, limit: int | None = None
) -> list[Message]:
    """The newest `limit` messages before `before_seq` (all if None), oldest first."""
    limit = limit or settings.CHAT_HISTORY_PAGE_SIZE
    qs = Message.objects.filter(conversation_id=conversation_id).select_related("sender")
    if before_seq is not None:
        qs = qs.filter(seq__lt=before_seq)
    return list(reversed(qs.order_by("-seq")[:limit]))


def messages_after(
    conversation_id: int, after_seq: int, *, upto: int | None = None, limit: int = 500
) -> list[Message]:
    """Stored messages with after_seq < seq (<= upto), oldest first: replay and gap healing."""
    qs = Message.objects.filter(conversation_id=conversation_id, seq__gt=after_seq)
    if upto is not None:
        qs = qs.filter(seq__lte=upto)
    return list(qs.select_related("sender").order_by("seq")[:limit])


def conversation_last_seq(conversation_id: int) -> int:
    value = (
        Conversation.objects.filter(id=conversation_id).values_list("last_seq", flat=True).first()
    )
    return value or 0


def participant_user_ids(conversation_id: int) -> list[int]:
    return list(
        Participant.objects.filter(conversation_id=conversation_id).values_list(
            "user_id", flat=True
        )
    )


def participant_names(conversation_id: int) -> dict[int, str]:
    """user id -> username for everyone in the conversation (empty if it does not exist)."""
    return dict(
        Participant.objects.filter(conversation_id=conversation_id)
        .order_by("user__username")
        .values_list("user_id", "user__username")
    )


def rendered_messages_after(
    conversation_id: int, after_seq: int, upto: int | None, limit: int
) -> list[tuple[int, str]]:
    """(seq, fragment) pairs for replay and gap healing, oldest first."""
    from chat.rendering import message_html

    return [
        (m.seq, message_html(m))
        for m in messages_after(conversation_id, after_seq, upto=upto, limit=limit)
    ]


def recent_conversation_ids(user_id: int, limit: int) -> list[int]:
    return list(
        Participant.objects.filter(user_id=user_id)
        .order_by(F("conversation__last_message_at").desc(nulls_last=True), "-conversation_id")
        .values_list("conversation_id", flat=True)[:limit]
    )


def connect_info(conversation_id: int) -> tuple[dict[int, str], int]:
    """Participants (id -> username) and the newest sequence, for a connecting socket."""
    return participant_names(conversation_id), conversation_last_seq(conversation_id)


def conversations_changed_since(user_id: int, since, limit: int) -> list[int]:
    """Ids of the user's conversations with a message after `since`, oldest change first."""
    return list(
        Participant.objects.filter(user_id=user_id, conversation__last_message_at__gt=since)
        .order_by("conversation__last_message_at")
        .values_list("conversation_id", flat=True)[:limit]
    )
