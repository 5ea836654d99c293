"""Storing messages: the one statement that gives a message its sequence number, on a
database thread (`message_create`, `message_create_and_render`) or on the event loop's own
connections (`message_store`, which stores the sends queued behind it together), and
`message_send`, which stores and publishes (and, for a message that mentions people, marks
them after it is published)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid
from collections.abc import Awaitable
from contextlib import nullcontext
from typing import TYPE_CHECKING, NamedTuple

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from chat import events, fragments
from chat.models import Conversation, Message
from chat.services.mentions import mentions_notify
from chat.stream import Row
from chat.templatetags.chat_links import mentioned_names
from parley import dbcalls, loopdb, metrics
from parley.perloop import per_loop

if TYPE_CHECKING:
    from chat.hub import ConversationHub

logger = logging.getLogger(__name__)


class MessageRejected(ValueError):
    """The message cannot be stored; `str(exc)` is safe to show to the sender."""


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


# Only a participant's message takes a number: checked in the statement that writes, so a
# member removed a moment ago cannot store one more (the socket is being closed meanwhile).
_BUMP_SQL = (
    "UPDATE chat_conversation SET last_seq = last_seq + 1, last_message_at = %(now)s, "
    "last_message_preview = %(preview)s, last_message_sender = %(sender_name)s "
    "WHERE id = %(conversation)s AND EXISTS (SELECT 1 FROM chat_participant "
    "WHERE conversation_id = %(conversation)s AND user_id = %(sender)s) RETURNING last_seq"
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
    """Returns (message id, seq), or None if the conversation does not exist or the sender is
    not one of its participants."""
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
    message with created=False, so it is stored and broadcast once. Raises
    Conversation.DoesNotExist when the sender is not a participant (or there is none).
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


class Stored(NamedTuple):
    """A message a websocket send stored (or had stored before, `created` False)."""

    seq: int
    frame: str  # the one frame every recipient's socket gets
    created: bool
    preview: str  # the conversation list's row
    at: float  # stored at (epoch seconds)


def message_create_and_render(
    conversation_id: int, user_id: int, username: str, body: str, client_id: uuid.UUID | None
) -> Stored:
    """Stores a message sent over a websocket and renders the one frame every recipient gets.
    Runs in a database thread.

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
    return _stored_result(message, created)


_EXISTING_SQL = (
    "SELECT id, seq, body, created_at FROM chat_message "
    "WHERE conversation_id = %(conversation)s AND sender_id = %(sender)s "
    "AND client_id = %(client_id)s"
)
# Several sends to one conversation in ONE statement: the members' sends (checked here, as
# _BUMP_SQL does) take the next numbers in the order given, the counter moves once, the list
# row shows the last. Returns (id, seq, position in the arrays) per stored send. A resend of
# a stored message fails it whole (the unique client id): each send is then stored alone.
_STORE_BATCH_SQL = (
    "WITH given AS (SELECT * FROM unnest(%(senders)s::bigint[], %(names)s::text[], "
    "%(client_ids)s::uuid[], %(bodies)s::text[]) WITH ORDINALITY "
    "AS t(sender, sender_name, client_id, body, idx)), "
    "ok AS MATERIALIZED (SELECT given.*, row_number() OVER (ORDER BY idx) AS k FROM given "
    "WHERE EXISTS (SELECT 1 FROM chat_participant WHERE conversation_id = %(conversation)s "
    "AND user_id = given.sender)), "
    "newest AS (SELECT body, sender_name, (SELECT count(*) FROM ok) AS n FROM ok "
    "ORDER BY k DESC LIMIT 1), "
    "bumped AS (UPDATE chat_conversation SET last_seq = last_seq + newest.n, "
    "last_message_at = %(now)s, last_message_preview = left(newest.body, 140), "
    "last_message_sender = newest.sender_name FROM newest "
    "WHERE id = %(conversation)s RETURNING last_seq - newest.n AS before), "
    "stored AS (INSERT INTO chat_message "
    "(conversation_id, sender_id, seq, client_id, body, created_at) "
    "SELECT %(conversation)s, ok.sender, bumped.before + ok.k, ok.client_id, ok.body, %(now)s "
    "FROM ok, bumped RETURNING id, seq) "
    "SELECT stored.id, stored.seq, ok.idx FROM stored, bumped, ok "
    "WHERE ok.k = stored.seq - bumped.before"
)


class _Send(NamedTuple):
    """One send waiting for its store on the event loop."""

    user_id: int
    username: str
    body: str
    client_id: uuid.UUID | None
    now: datetime.datetime


# What a store gives back: (id, seq, body, created_at, created), or None when the sender is
# not a participant (or the conversation is gone).
_Outcome = tuple[int, int, str, datetime.datetime, bool] | None


async def message_store(
    conversation_id: int, user_id: int, username: str, body: str, client_id: uuid.UUID | None
) -> Stored:
    """message_create_and_render on the event loop (parley.loopdb: Postgres only): the same
    idempotency and the same frame, with no database thread in between. Sends to one
    conversation that queue meanwhile are stored together (`_store_batch`). Raises Django's
    DatabaseError family, as the thread's version does, and parley.loopdb.NoConnectionInTime
    when every store connection stayed busy."""
    outcome = await _conversation_stores().submit(
        conversation_id, _Send(user_id, username, body, client_id, timezone.now())
    )
    if outcome is None:
        raise Conversation.DoesNotExist(conversation_id)
    pk, seq, stored_body, created_at, created = outcome
    sender = _sender(user_id, username)
    message = _stored(pk, conversation_id, sender, seq, stored_body, created_at, client_id)
    return _stored_result(message, created)


async def _store_batch(conversation_id: int, sends: list[_Send]) -> list[_Outcome | Exception]:
    """Stores `sends` to one conversation: one statement for them all; if that fails, each
    alone, so each gets exactly the answer it would have had by itself."""
    metrics.STORE_BATCH_SIZE.observe(len(sends))
    if len(sends) == 1:
        return [await _outcome_of(_store_one(conversation_id, sends[0]))]
    now = sends[0].now
    params = {
        "conversation": conversation_id,
        "senders": [s.user_id for s in sends],
        "names": [s.username for s in sends],
        "client_ids": [s.client_id for s in sends],
        "bodies": [s.body for s in sends],
        "now": now,
    }
    try:
        async with loopdb.loop_connections().connection() as conn:
            rows = await (await conn.execute(_STORE_BATCH_SQL, params)).fetchall()
    except psycopg.Error:
        return [await _outcome_of(_store_one(conversation_id, send)) for send in sends]
    by_position = {idx: (pk, seq) for pk, seq, idx in rows}
    outcomes: list[_Outcome | Exception] = []
    for position, send in enumerate(sends, start=1):
        stored = by_position.get(position)
        outcomes.append(None if stored is None else (*stored, send.body, now, True))
    return outcomes


async def _outcome_of(store: Awaitable[_Outcome]) -> _Outcome | Exception:
    try:
        return await store
    except Exception as exc:  # noqa: BLE001 - handed to its own sender, raised there
        return exc


async def _store_one(conversation_id: int, send: _Send) -> _Outcome:
    """One send in one statement (_STORE_SQL_POSTGRES); a resend returns the stored one."""
    params = {
        "now": send.now,
        "preview": send.body[:140],
        "sender_name": send.username,
        "conversation": conversation_id,
        "sender": send.user_id,
        "client_id": send.client_id,
        "body": send.body,
    }
    pool = loopdb.loop_connections()
    attempts = 2 if send.client_id is not None else 1
    for attempt in range(attempts):
        try:
            async with pool.connection() as conn:
                try:
                    row = await (await conn.execute(_STORE_SQL_POSTGRES, params)).fetchone()
                except psycopg.errors.UniqueViolation as exc:
                    if send.client_id is None:
                        raise IntegrityError(str(exc)) from exc
                    existing = await (await conn.execute(_EXISTING_SQL, params)).fetchone()
                    if existing is None:
                        raise IntegrityError(str(exc)) from exc
                    pk, seq, stored_body, created_at = existing
                    return pk, seq, stored_body, created_at, False
            break
        except psycopg.OperationalError as exc:
            if attempt + 1 == attempts:
                raise OperationalError(str(exc)) from exc
            logger.warning("store failed on a dead connection; retrying once")
        except psycopg.Error as exc:
            raise DatabaseError(str(exc)) from exc
    return None if row is None else (row[0], row[1], send.body, send.now, True)


# Each event loop's queues of sends by conversation (parley.loopdb.Batches).
_conversation_stores = per_loop(
    lambda _loop: loopdb.Batches(_store_batch, limit=lambda: settings.CHAT_DB_STORE_BATCH)
)


async def message_send(
    *,
    hub: ConversationHub,
    sender_id: int,
    sender_name: str,
    body: str,
    client_id: uuid.UUID | None,
) -> Stored:
    """Stores a message sent over a websocket and publishes it: to the conversation's sockets
    in this process at once (the sender's confirmation among them), then to the other
    processes (chat.hub). A retry of a message already stored is published again: the
    process that stored it may have died before its broadcast (recipients drop a sequence
    they have). Raises Conversation.DoesNotExist (not a participant), DatabaseBusy (no
    database slot in time: not stored) and DatabaseError (stored or not is unknown)."""
    stored = await dbcalls.store(message_create_and_render, message_store)(
        hub.conversation_id, sender_id, sender_name, body, client_id
    )
    stored_at = time.perf_counter()
    if stored.created:
        metrics.MESSAGES_STORED.inc()
    event = events.message(
        conversation_id=hub.conversation_id,
        seq=stored.seq,
        frame=stored.frame,
        publisher=hub.publisher,
        preview=stored.preview,
        sender=sender_name,
        at=stored.at,
    )
    if await hub.publish(Row(stored.seq, stored.frame), event) and stored.created:
        metrics.BROADCAST_SECONDS.observe(time.perf_counter() - stored_at)
    if stored.created and "@" in body:
        _mentions_later(hub.conversation_id, sender_id, sender_name, body, stored.seq)
    return stored


# Mention writes in flight: a task the loop holds no other reference to could be collected.
_mention_tasks: set[asyncio.Task] = set()


def _mentions_later(
    conversation_id: int, sender_id: int, sender_name: str, body: str, seq: int
) -> None:
    """Marks the members `body` mentions, off the send's path: the message is stored,
    confirmed and published already, and a send without "@" never comes here. Best effort:
    a database that cannot take it now (busy, down) costs the mark, never the message."""
    names = [name for name in mentioned_names(body) if name != sender_name]
    if not names:
        return
    task = asyncio.ensure_future(_mentions(conversation_id, sender_id, names, seq))
    _mention_tasks.add(task)
    task.add_done_callback(_mention_tasks.discard)


async def _mentions(conversation_id: int, sender_id: int, names: list[str], seq: int) -> None:
    try:
        await mentions_notify(
            conversation_id=conversation_id, sender_id=sender_id, names=names, seq=seq
        )
    except DatabaseError as exc:
        logger.warning("mention marker not stored", extra={"error": type(exc).__name__})
    except Exception:
        logger.exception("mention marker failed")


def _stored_result(message: Message, created: bool) -> Stored:
    return Stored(
        message.seq, _frame(message), created, message.body[:140], message.created_at.timestamp()
    )


def _sender(user_id: int, username: str) -> AbstractBaseUser:
    """The sender as a store needs it (id and name), without reading the user."""
    return get_user_model()(pk=user_id, **{get_user_model().USERNAME_FIELD: username})


def _frame(message: Message) -> str:
    """The one frame every recipient of a stored message gets."""
    return fragments.ws_message(fragments.message_html(message))


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
