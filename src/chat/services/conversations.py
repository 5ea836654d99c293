"""Conversations and who is in them: starting one, leaving, removing people, read markers,
muting and history epochs. Each write is one transaction; its event is sent once it is committed."""

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
from chat.models import Conversation, Message, Participant, new_epoch
from chat.services.entries import entry_append, locked_conversation
from parley import dbcalls

User = get_user_model()


class UnknownUsers(ValueError):
    def __init__(self, usernames: list[str]) -> None:
        super().__init__(", ".join(usernames))
        self.usernames = usernames


class PeopleRefused(ValueError):
    """People cannot be added; `str(exc)` is safe to show."""


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
    conversation = Conversation.objects.create(
        title=title[:200], created_by=creator, is_direct=len(users) == 1 and not title
    )
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


@transaction.atomic
def participants_add(
    *, conversation_id: int, actor: AbstractBaseUser, usernames: Iterable[str]
) -> list[str]:
    """A participant of a group conversation adds people: they see its whole history, their
    conversation lists follow it, and the conversation shows "alice added bob" (an entry of
    its stream). A 1:1 conversation stays between its two people. Returns the names added
    (none: all were in it already). Raises UnknownUsers, PeopleRefused and
    Conversation.DoesNotExist (the actor is not a participant)."""
    wanted = sorted({u.strip() for u in usernames if u.strip()})
    if not wanted:
        raise UnknownUsers([])
    limit = settings.CHAT_ADD_PEOPLE_LIMIT
    if len(wanted) > limit:
        raise PeopleRefused(f"Add at most {limit} people at a time.")
    conversation = locked_conversation(conversation_id, actor.pk)
    if conversation.is_direct:
        raise PeopleRefused(
            "A 1:1 conversation stays between its two people: start a group instead."
        )
    users = list(User.objects.filter(username__in=wanted, is_active=True).order_by("username"))
    missing = sorted(set(wanted) - {u.get_username() for u in users})
    if missing:
        raise UnknownUsers(missing)
    present = set(
        Participant.objects.filter(conversation=conversation).values_list("user_id", flat=True)
    )
    new = [u for u in users if u.pk not in present]
    if not new:
        return []
    Participant.objects.bulk_create([Participant(conversation=conversation, user=u) for u in new])
    names = [u.get_username() for u in new]
    entry_append(
        conversation,
        kind=Message.ADDED,
        sender=actor,
        body=f"{actor.get_username()} added {_names(names)}",
    )
    news = [events.joined(user_id=u.pk, conversation_id=conversation.pk) for u in new]
    news.append(
        events.members(conversation_id=conversation.pk, removed=[], added=[u.pk for u in new])
    )
    transaction.on_commit(lambda: [events.broadcast_sync(e) for e in news])
    return names


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def participants_remove(
    *, conversation_id: int, user_ids: Iterable[int], actor: AbstractBaseUser | None = None
) -> list[int]:
    """Removes these users from the conversation. Their sockets on it close with 4403 at
    once, in every process, and their conversation lists drop it (chat.signals sends the
    event for every removal, the admin's included); the conversation shows who left or was
    removed (an entry of its stream). Returns who was removed."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().filter(pk=conversation_id).first()
        rows = Participant.objects.filter(
            conversation_id=conversation_id, user_id__in=user_ids
        ).select_related("user")
        gone = sorted(rows, key=lambda p: p.user.get_username())
        for participant in gone:
            participant.delete()
        if conversation is not None and gone:
            names = _names([p.user.get_username() for p in gone])
            if actor is not None and [p.user_id for p in gone] == [actor.pk]:
                kind, sender, body = Message.LEFT, actor, f"{names} left"
            elif actor is not None:
                body = f"{actor.get_username()} removed {names}"
                kind, sender = Message.REMOVED, actor
            else:
                kind, sender, body = Message.REMOVED, gone[0].user, f"{names} removed"
            entry_append(conversation, kind=kind, sender=sender, body=body)
    return sorted(p.user_id for p in gone)


def conversation_leave(*, conversation_id: int, user: AbstractBaseUser) -> bool:
    """The user leaves the conversation (as participants_remove). False if they were not in it."""
    return bool(
        participants_remove(conversation_id=conversation_id, user_ids=[user.pk], actor=user)
    )


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


def conversation_mute(*, conversation_id: int, user: AbstractBaseUser, muted: bool) -> bool:
    """Mutes (or unmutes) the conversation for the user: it still counts unread, but their
    pages notify only of mentions. False if they are not a participant."""
    return bool(
        Participant.objects.filter(conversation_id=conversation_id, user=user).update(muted=muted)
    )


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
