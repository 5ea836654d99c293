"""Conversations and who is in them: starting one, leaving, removing people, read markers and
history epochs. Each write is one transaction; its event is sent once it is committed."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from chat import events
from chat.models import Conversation, Participant, new_epoch
from parley import dbcalls

User = get_user_model()


class UnknownUsers(ValueError):
    def __init__(self, usernames: list[str]) -> None:
        super().__init__(", ".join(usernames))
        self.usernames = usernames


class TooManyConversations(Exception):
    """The creator started CHAT_NEW_CONVERSATIONS_LIMIT conversations within
    CHAT_NEW_CONVERSATIONS_WINDOW_SECONDS; `retry_after` seconds until one more may start."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


@transaction.atomic
def conversation_start(
    *, creator: AbstractBaseUser, usernames: Iterable[str], title: str = ""
) -> Conversation:
    """Starts a conversation between the creator and the named users, and tells every one
    of them (their conversation lists follow it). A 1:1 conversation that already exists
    between the same two people is reused. Raises UnknownUsers, TooManyConversations."""
    wanted = {u.strip() for u in usernames if u.strip()} - {creator.get_username()}
    if not wanted:
        raise UnknownUsers([])
    users = list(User.objects.filter(username__in=wanted, is_active=True))
    found = {u.get_username() for u in users}
    missing = sorted(wanted - found)
    if missing:
        raise UnknownUsers(missing)
    if len(users) == 1 and not title:
        existing = _pair(creator, users[0])
        if existing is not None:
            return existing
    _check_creation_rate(creator)
    conversation = Conversation.objects.create(title=title[:200], created_by=creator)
    Participant.objects.bulk_create(
        [Participant(conversation=conversation, user=u) for u in [creator, *users]]
    )
    joined = [
        events.joined(user_id=u.pk, conversation_id=conversation.pk) for u in [creator, *users]
    ]
    transaction.on_commit(lambda: [events.broadcast_sync(e) for e in joined])
    return conversation


def _pair(one: AbstractBaseUser, other: AbstractBaseUser) -> Conversation | None:
    """The untitled conversation of exactly these two people, if there is one."""
    shared = Participant.objects.filter(
        user=other,
        conversation__title="",
        conversation__in=Participant.objects.filter(user=one).values("conversation"),
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
    return Conversation.objects.filter(pk=pair).first() if pair else None


def _check_creation_rate(creator: AbstractBaseUser) -> None:
    """At most CHAT_NEW_CONVERSATIONS_LIMIT new conversations per creator per window, counted
    in the database (every process agrees), with the creator's row locked so two requests at
    once cannot both take the last one."""
    User.objects.select_for_update().filter(pk=creator.pk).first()
    window = datetime.timedelta(seconds=settings.CHAT_NEW_CONVERSATIONS_WINDOW_SECONDS)
    since = timezone.now() - window
    recent = list(
        Conversation.objects.filter(created_by=creator, created_at__gt=since)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[: settings.CHAT_NEW_CONVERSATIONS_LIMIT]
    )
    if len(recent) >= settings.CHAT_NEW_CONVERSATIONS_LIMIT:
        frees_at = recent[-1] + window
        raise TooManyConversations(max(1, int((frees_at - timezone.now()).total_seconds()) + 1))


def participants_remove(*, conversation_id: int, user_ids: Iterable[int]) -> list[int]:
    """Removes these users from the conversation. Their sockets on it close with 4403 at
    once, in every process, and their conversation lists drop it (chat.signals sends the
    event for every removal, the admin's included). Returns who was removed."""
    with transaction.atomic():
        rows = Participant.objects.filter(conversation_id=conversation_id, user_id__in=user_ids)
        removed = sorted(rows.values_list("user_id", flat=True))
        for participant in rows:
            participant.delete()
    return removed


def conversation_leave(*, conversation_id: int, user: AbstractBaseUser) -> bool:
    """The user leaves the conversation (as participants_remove). False if they were not in it."""
    return bool(participants_remove(conversation_id=conversation_id, user_ids=[user.pk]))


def conversation_mark_read(*, conversation_id: int, user_id: int, seq: int) -> int:
    """Moves the read marker forward (never back). Returns rows changed (0 or 1)."""
    return Participant.objects.filter(
        conversation_id=conversation_id, user_id=user_id, last_read_seq__lt=seq
    ).update(last_read_seq=seq)


async def read_marker_move(*, conversation_id: int, user_id: int, seq: int) -> None:
    """conversation_mark_read from a socket, then the user's conversation lists are told."""
    await dbcalls.db(conversation_mark_read)(
        conversation_id=conversation_id, user_id=user_id, seq=seq
    )
    await events.broadcast(events.read(user_id=user_id, conversation_id=conversation_id, seq=seq))


def conversation_new_epoch(*, conversation_id: int, seen_epoch: str) -> str:
    """Starts a new history epoch for the conversation if it is still `seen_epoch` (the
    server found the history went back under what it handed out); returns the current epoch
    either way, so several processes noticing at once agree on one new epoch."""
    Conversation.objects.filter(pk=conversation_id, epoch=seen_epoch).update(epoch=new_epoch())
    return Conversation.objects.values_list("epoch", flat=True).get(pk=conversation_id)


def conversations_new_epoch() -> int:
    """A new epoch for every conversation: the last step of a restore, whose history may be
    older than what pages have shown. Returns how many conversations."""
    with transaction.atomic():
        ids = list(Conversation.objects.values_list("pk", flat=True))
        for pk in ids:
            Conversation.objects.filter(pk=pk).update(epoch=new_epoch())
    return len(ids)
