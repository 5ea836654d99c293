"""Reads: data only (fragments.py makes the HTML). Keyset pagination by sequence number: no
OFFSET scans.

The two reads of every conversation page are written out in SQL: building and compiling
them with the ORM cost more CPU than running them (loadtest/experiments/2026-11-27-page.md).
"""

from __future__ import annotations

import datetime
import functools
import re
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import BooleanField, F, FloatField, Func, QuerySet, Value

from chat.models import Conversation, Message, Participant
from chat.positions import Position


@dataclass(frozen=True)
class Members:
    """A conversation as its members see it, read in one query."""

    pk: int
    title: str  # the conversation's own title ('' for none)
    last_seq: int
    epoch: str
    names: dict[int, str]  # user id -> username, by username
    read_seqs: dict[int, int]  # user id -> read marker
    is_direct: bool = False  # a 1:1 conversation: nobody can be added
    muted: frozenset[int] = frozenset()  # ids of the members who muted it


_MEMBERS_SQL = (
    "SELECT p.user_id, u.{username}, p.last_read_seq, c.title, c.last_seq, c.epoch, "
    "c.is_direct, p.muted "
    "FROM {participant} p "
    "JOIN {user} u ON u.{user_pk} = p.user_id "
    "JOIN {conversation} c ON c.id = p.conversation_id "
    "WHERE p.conversation_id = %s ORDER BY u.{username}"
)


@functools.cache
def _members_sql() -> str:
    """Tables and columns by the models' names (a swapped user model has its own table);
    quoted identifiers from the models, never input."""
    User = get_user_model()
    q = connection.ops.quote_name
    return _MEMBERS_SQL.format(
        user=q(User._meta.db_table),
        user_pk=q(User._meta.pk.column),
        username=q(User._meta.get_field(User.USERNAME_FIELD).column),
        participant=q(Participant._meta.db_table),
        conversation=q(Conversation._meta.db_table),
    )


def conversation_members(conversation_id: int) -> Members | None:
    """The conversation, its participants, their read markers and who muted it; None if it
    has none."""
    with connection.cursor() as cursor:
        cursor.execute(_members_sql(), [conversation_id])
        rows = cursor.fetchall()
    if not rows:
        return None
    _, _, _, title, last_seq, epoch, is_direct, _ = rows[0]
    names = {user_id: username for user_id, username, *_ in rows}
    read_seqs = {user_id: read_seq for user_id, _, read_seq, *_ in rows}
    muted = frozenset(row[0] for row in rows if row[7])
    return Members(
        conversation_id, title, last_seq, epoch, names, read_seqs, bool(is_direct), muted
    )


# What a page shows: every entry but the changes (Message.CHANGES: an edit or a delete is
# shown in the message it changes, read as it is now).
_HISTORY_SQL = (
    "SELECT id, seq, sender_id, created_at, edited_at, deleted_at FROM {message} "
    "WHERE conversation_id = %s{before} AND kind NOT IN ({changes}) "
    "ORDER BY seq DESC LIMIT %s"
)


@functools.cache
def _history_sql(before: bool) -> str:
    """The table by the model's name and the kinds from the model: constants, never input."""
    return _HISTORY_SQL.format(
        message=connection.ops.quote_name(Message._meta.db_table),
        before=" AND seq < %s" if before else "",
        changes=", ".join(f"'{kind}'" for kind in Message.CHANGES),
    )


def history_keys(
    conversation_id: int, *, before_seq: int | None = None, limit: int | None = None
) -> list[tuple[int, int, int, object, object, object]]:
    """(id, seq, sender id, created_at, edited_at, deleted_at) of the newest `limit` entries
    a page shows before `before_seq`, oldest first: enough to find their fragments in the
    cache without loading them."""
    limit = limit or settings.CHAT_HISTORY_PAGE_SIZE
    with connection.cursor() as cursor:
        if before_seq is None:
            cursor.execute(_history_sql(False), [conversation_id, limit])
        else:
            cursor.execute(_history_sql(True), [conversation_id, before_seq, limit])
        return [tuple(row) for row in reversed(cursor.fetchall())]


def messages_by_id(ids: list[int]) -> list[Message]:
    return list(
        Message.objects.filter(pk__in=ids).select_related("sender", "target", "target__sender")
    )


@dataclass(frozen=True)
class ConversationRow:
    conversation: Conversation
    title: str
    unread: int
    last_read_seq: int
    last_mention_seq: int = 0
    muted: bool = False

    @property
    def mentioned(self) -> bool:
        """A message mentioning the viewer is not read yet."""
        return self.last_mention_seq > self.last_read_seq


def conversation_title(conversation: Conversation, names: list[str], viewer: str) -> str:
    return _title(conversation.title, names, viewer)


def _title(title: str, names: list[str], viewer: str) -> str:
    """A conversation's own title, or else its other members' names."""
    if title:
        return title
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


# Newest activity first; conversations without messages by when they started.
_LIST_ORDER = (
    F("conversation__last_message_at").desc(nulls_last=True),
    "-conversation__created_at",
    "-conversation_id",
)


def conversation_list(
    user: AbstractBaseUser, *, limit: int | None = None, offset: int = 0
) -> list[ConversationRow]:
    """The conversations the user takes part in, newest activity first, with unread counts
    (`limit` of them after the first `offset`)."""
    memberships = Participant.objects.filter(user=user).select_related("conversation")
    memberships = memberships.order_by(*_LIST_ORDER)[
        offset : None if limit is None else offset + limit
    ]
    memberships = list(memberships)
    names = _member_names([p.conversation_id for p in memberships])
    viewer = user.get_username()
    return [
        ConversationRow(
            conversation=p.conversation,
            title=conversation_title(p.conversation, names[p.conversation_id], viewer),
            unread=max(p.conversation.last_seq - p.last_read_seq, 0),
            last_read_seq=p.last_read_seq,
            last_mention_seq=p.last_mention_seq,
            muted=p.muted,
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
        last_mention_seq=p.last_mention_seq,
        muted=p.muted,
    )


def messages_after(
    conversation_id: int, after_seq: int, *, upto: int | None = None, limit: int = 500
) -> list[Message]:
    """Stored messages with after_seq < seq (<= upto), oldest first: replay and gap healing."""
    qs = Message.objects.filter(conversation_id=conversation_id, seq__gt=after_seq)
    if upto is not None:
        qs = qs.filter(seq__lte=upto)
    return list(qs.select_related("sender", "target", "target__sender").order_by("seq")[:limit])


def participant_user_ids(conversation_id: int) -> list[int]:
    return list(
        Participant.objects.filter(conversation_id=conversation_id).values_list(
            "user_id", flat=True
        )
    )


def recent_conversation_ids(user_id: int, limit: int) -> list[int]:
    """The user's `limit` most recently active conversations, as conversation_list orders."""
    return list(
        Participant.objects.filter(user_id=user_id)
        .order_by(*_LIST_ORDER)
        .values_list("conversation_id", flat=True)[:limit]
    )


def connect_info(conversation_id: int) -> tuple[dict[int, str], Position]:
    """Participants (id -> username) and the history's position, for a connecting socket."""
    members = conversation_members(conversation_id)
    if members is None:
        return {}, Position(0, "")
    return members.names, Position(members.last_seq, members.epoch)


def conversation_position(conversation_id: int) -> Position:
    """The conversation's newest sequence and epoch (0 and "" if there is none)."""
    row = Conversation.objects.filter(pk=conversation_id).values_list("last_seq", "epoch").first()
    return Position(*row) if row else Position(0, "")


def conversations_changed_since(user_id: int, since, limit: int) -> list[int]:
    """Ids of the user's conversations with a message after `since`, oldest change first."""
    return list(
        Participant.objects.filter(user_id=user_id, conversation__last_message_at__gt=since)
        .order_by("conversation__last_message_at")
        .values_list("conversation_id", flat=True)[:limit]
    )


def conversation_states(
    conversation_ids: list[int],
) -> dict[int, tuple[Position, frozenset[int]]]:
    """Each conversation's position and participants, by id (the process heartbeat)."""
    positions = Conversation.objects.filter(pk__in=conversation_ids).values_list(
        "pk", "last_seq", "epoch"
    )
    members: dict[int, set[int]] = {}
    rows = Participant.objects.filter(conversation_id__in=conversation_ids).values_list(
        "conversation_id", "user_id"
    )
    for cid, uid in rows:
        members.setdefault(cid, set()).add(uid)
    return {
        pk: (Position(seq, epoch), frozenset(members.get(pk, ()))) for pk, seq, epoch in positions
    }


def live_session_keys(session_keys: list[str]) -> set[str]:
    """Those of `session_keys` that still name a live (unexpired) session."""
    from importlib import import_module

    from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
    from django.utils import timezone

    store = import_module(settings.SESSION_ENGINE).SessionStore
    if issubclass(store, DbSessionStore):  # one query instead of one per key
        return set(
            store.get_model_class()
            .objects.filter(session_key__in=session_keys, expire_date__gt=timezone.now())
            .values_list("session_key", flat=True)
        )
    return {key for key in session_keys if store().exists(key)}


def session_auth_hashes(user_ids: list[int]) -> dict[int, str]:
    """The session auth hash (changes with the password) of each active user, by id; an
    inactive or deleted user is left out."""
    User = get_user_model()
    rows = User.objects.filter(pk__in=user_ids, is_active=True).values_list("pk", "password")
    return {pk: User(pk=pk, password=password).get_session_auth_hash() for pk, password in rows}


# --- search -------------------------------------------------------------------------------

SEARCH_MAX_QUERY_LENGTH = 200  # characters of a search query

# Postgres: the expression the GIN index (migration *_message_body_search) is built on, word
# for word, or the planner cannot use it. 'simple': lower-cased words, no stemming or stop
# words, which suits messages in any language (the migration says more). Its parser reads
# HTML: the words inside <...> and in a <script> or <style> element are not indexed (the
# SQLite fallback finds them).
SEARCH_VECTOR_SQL = "to_tsvector('simple'::regconfig, %(expressions)s)"
# Every word of the query must be in the message (plainto_tsquery ANDs them, and takes any
# text: no query syntax to get wrong).
SEARCH_QUERY_SQL = "plainto_tsquery('simple'::regconfig, %(expressions)s)"


@dataclass(frozen=True)
class SearchHit:
    """One message a search found, with what its result shows."""

    message_id: int
    conversation_id: int
    seq: int
    conversation_title: str  # as the searching person sees it
    sender: str
    created_at: datetime.datetime
    body: str


def search_terms(query: str) -> list[str]:
    """The query's words (letters, digits, underscore), lower-cased, each once: what the
    SQLite fallback looks for and what a result highlights. Empty: nothing to search for."""
    return list(dict.fromkeys(word.lower() for word in re.findall(r"\w+", query)))


def searchable_messages(user: AbstractBaseUser) -> QuerySet[Message]:
    """The rows a search by `user` may return: messages of the conversations the user takes
    part in now (never one they left or were removed from), as they read now: what someone
    wrote (not a change of people or an edit's entry), never a deleted one. The one place
    that says which rows count: both backends' searches start here."""
    return Message.objects.filter(
        conversation_id__in=Participant.objects.filter(user=user).values("conversation_id"),
        kind=Message.MESSAGE,
        deleted_at__isnull=True,
    )


def message_search(*, user: AbstractBaseUser, query: str, limit: int) -> list[SearchHit]:
    """At most `limit` messages with every word of `query`, from the user's conversations.

    Postgres: full-text search on the GIN index (migration *_message_body_search), best rank
    (ts_rank) first, then newest. Elsewhere (SQLite, `make dev`): a case-insensitive
    substring match of each word, newest first."""
    terms = search_terms(query)
    if not terms or limit < 1:
        return []
    rows = searchable_messages(user)
    if connection.vendor == "postgresql":
        vector = Func(F("body"), template=SEARCH_VECTOR_SQL)
        tsquery = Func(Value(query), template=SEARCH_QUERY_SQL)
        rows = (
            rows.filter(
                Func(
                    vector,
                    tsquery,
                    template="%(expressions)s",
                    arg_joiner=" @@ ",
                    output_field=BooleanField(),
                )
            )
            .annotate(rank=Func(vector, tsquery, function="ts_rank", output_field=FloatField()))
            .order_by("-rank", "-created_at", "-id")
        )
    else:
        for term in terms:
            rows = rows.filter(body__icontains=term)
        rows = rows.order_by("-created_at", "-id")
    username = f"sender__{get_user_model().USERNAME_FIELD}"
    found = list(
        rows.values_list(
            "id", "conversation_id", "seq", "conversation__title", username, "created_at", "body"
        )[:limit]
    )
    names = _member_names(list({row[1] for row in found}))
    viewer = user.get_username()
    return [
        SearchHit(pk, cid, seq, _title(title, names[cid], viewer), sender, created_at, body)
        for pk, cid, seq, title, sender, created_at, body in found
    ]
