"""Writes. Every function here is one transaction."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Iterable
from contextlib import nullcontext

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from chat import fragments
from chat.models import Conversation, Message, Participant
from parley import loopdb

logger = logging.getLogger(__name__)

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
    check_storable_text(body)
    return body


def check_storable_text(text: str) -> None:
    """Refuses text that one of the databases cannot store, the same way on both: a lone
    UTF-16 surrogate (valid in JSON as \\ud800, but not encodable as UTF-8) and NUL (Postgres
    text cannot hold it; SQLite would)."""
    if "\x00" in text:
        raise MessageRejected("Message refused: it contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageRejected(
            "Message refused: it contains an unpaired surrogate, which is not valid text."
        ) from None


_BUMP_SQL = (
    "UPDATE chat_conversation SET last_seq = last_seq + 1, last_message_at = %(now)s, "
    "last_message_preview = %(preview)s, last_message_sender = %(sender_name)s "
    "WHERE id = %(conversation)s RETURNING last_seq"
)
# Postgres: bump the counter and insert in ONE statement (one round trip). A statement is
# its own transaction, so the sequence and the row commit or fail together; the UPDATE's
# row lock makes concurrent senders queue, and a failed insert gives the number back.
_STORE_SQL_POSTGRES = (
    "WITH bumped AS (" + _BUMP_SQL + ") "
    "INSERT INTO chat_message (conversation_id, sender_id, seq, client_id, body, created_at) "
    "SELECT %(conversation)s, %(sender)s, last_seq, %(client_id)s, %(body)s, %(now)s "
    "FROM bumped RETURNING id, seq"
)
_INSERT_SQL = (
    "INSERT INTO chat_message (conversation_id, sender_id, seq, client_id, body, created_at) "
    "VALUES (%(conversation)s, %(sender)s, %(seq)s, %(client_id)s, %(body)s, %(now)s) "
    "RETURNING id"
)


def _store(params: dict) -> tuple[int, int] | None:
    """Returns (message id, seq), or None if the conversation does not exist."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_STORE_SQL_POSTGRES, params)
            return cursor.fetchone()
        # SQLite (the embedded default) has no data-modifying CTEs: two statements.
        cursor.execute(_BUMP_SQL, params)
        bumped = cursor.fetchone()
        if bumped is None:
            return None
        cursor.execute(_INSERT_SQL, {**params, "seq": bumped[0]})
        return cursor.fetchone()[0], bumped[0]


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
    # Raw SQL skips the ORM's value conversion: do it through the fields, as the ORM would
    # (SQLite stores the UUID as hex text and the datetime as a string; psycopg adapts both).
    fields = Message._meta
    params = {
        "now": fields.get_field("created_at").get_db_prep_value(now, connection),
        "preview": body[:140],
        "sender_name": sender.get_username(),
        "conversation": conversation_id,
        "sender": sender.pk,
        "client_id": fields.get_field("client_id").get_db_prep_value(client_id, connection),
        "body": body,
    }
    one_statement = connection.vendor == "postgresql" and not connection.in_atomic_block
    try:
        # Inside an outer transaction a savepoint keeps a duplicate from poisoning it.
        with nullcontext() if one_statement else transaction.atomic():
            row = _store(params)
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
    if row is None:
        raise Conversation.DoesNotExist(conversation_id)
    return _stored(row[0], conversation_id, sender, row[1], body, now, client_id), True


def message_create_and_render(
    conversation_id: int, user_id: int, username: str, body: str, client_id: uuid.UUID | None
) -> tuple[int, str, bool]:
    """Stores a message sent over a websocket and renders the one frame every recipient gets:
    (sequence, frame, created). Runs in a database thread.

    Not wrapped in a transaction, on purpose: message_create is one statement, so its own
    transaction, and one round trip on the thread every send of the process waits for (a
    BEGIN/SAVEPOINT/RELEASE/COMMIT around it made it five). A connection that died with its
    server (Postgres restarted) fails it once; with an idempotency key the send is retried
    on a fresh connection, since a retry cannot store it twice (inside a transaction the
    retry could not open one).
    """
    sender = _sender(user_id, username)
    attempts = 2 if client_id is not None else 1
    for attempt in range(attempts):
        try:
            message, created = message_create(
                conversation_id=conversation_id, sender=sender, body=body, client_id=client_id
            )
            break
        except OperationalError:
            if attempt + 1 == attempts:
                raise
            logger.warning("store failed on a dead connection; retrying once")
            connection.close()
    return message.seq, _frame(message), created


_EXISTING_SQL = (
    "SELECT id, seq, body, created_at FROM chat_message "
    "WHERE conversation_id = %(conversation)s AND sender_id = %(sender)s "
    "AND client_id = %(client_id)s"
)


async def message_store(
    conversation_id: int, user_id: int, username: str, body: str, client_id: uuid.UUID | None
) -> tuple[int, str, bool]:
    """message_create_and_render on the event loop (parley.loopdb: Postgres only): the same
    one statement, the same idempotency and the same frame, with no database thread in
    between. Raises Django's DatabaseError family, as the thread's version does, and
    parley.loopdb.NoConnectionInTime when every store connection stayed busy."""
    sender = _sender(user_id, username)
    now = timezone.now()
    params = {
        "now": now,
        "preview": body[:140],
        "sender_name": username,
        "conversation": conversation_id,
        "sender": user_id,
        "client_id": client_id,
        "body": body,
    }
    pool = loopdb.loop_connections()
    attempts = 2 if client_id is not None else 1
    for attempt in range(attempts):
        try:
            async with pool.connection() as conn:
                try:
                    row = await (await conn.execute(_STORE_SQL_POSTGRES, params)).fetchone()
                except psycopg.errors.UniqueViolation as exc:
                    if client_id is None:
                        raise IntegrityError(str(exc)) from exc
                    existing = await (await conn.execute(_EXISTING_SQL, params)).fetchone()
                    if existing is None:
                        raise IntegrityError(str(exc)) from exc
                    pk, seq, stored_body, created_at = existing
                    message = _stored(
                        pk, conversation_id, sender, seq, stored_body, created_at, client_id
                    )
                    return seq, _frame(message), False
            break
        except psycopg.OperationalError as exc:
            if attempt + 1 == attempts:
                raise OperationalError(str(exc)) from exc
            logger.warning("store failed on a dead connection; retrying once")
        except psycopg.Error as exc:
            raise DatabaseError(str(exc)) from exc
    if row is None:
        raise Conversation.DoesNotExist(conversation_id)
    message = _stored(row[0], conversation_id, sender, row[1], body, now, client_id)
    return message.seq, _frame(message), True


def _sender(user_id: int, username: str) -> AbstractBaseUser:
    """The sender as a store needs it (id and name), without reading the user."""
    return get_user_model()(pk=user_id, **{get_user_model().USERNAME_FIELD: username})


def _frame(message: Message) -> str:
    """The one frame every recipient of a stored message gets."""
    return fragments.ws_messages([fragments.message_html(message)])


def _stored(
    pk: int,
    conversation_id: int,
    sender: AbstractBaseUser,
    seq: int,
    body: str,
    created_at: datetime.datetime,
    client_id: uuid.UUID | None,
) -> Message:
    """The Message a store wrote, built from what it sent and got back (no read)."""
    message = Message(
        id=pk,
        conversation_id=conversation_id,
        sender=sender,
        seq=seq,
        client_id=client_id,
        body=body,
        created_at=created_at,
    )
    message._state.adding = False
    message._state.db = connection.alias
    return message


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


def conversation_new_epoch(*, conversation_id: int, seen_epoch: str) -> str:
    """Starts a new history epoch for the conversation if it is still `seen_epoch` (a socket
    found the history went back under it); returns the current epoch either way, so
    several processes noticing at once agree on one new epoch."""
    from chat.models import new_epoch

    Conversation.objects.filter(pk=conversation_id, epoch=seen_epoch).update(epoch=new_epoch())
    return Conversation.objects.values_list("epoch", flat=True).get(pk=conversation_id)


def conversations_new_epoch() -> int:
    """A new epoch for every conversation: the last step of a restore, whose history may be
    older than what pages have shown. Returns how many conversations."""
    from chat.models import new_epoch

    with transaction.atomic():
        ids = list(Conversation.objects.values_list("pk", flat=True))
        for pk in ids:
            Conversation.objects.filter(pk=pk).update(epoch=new_epoch())
    return len(ids)
