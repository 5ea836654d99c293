"""Mention markers: a message that names members by `@username` (as
chat.templatetags.chat_links marks them) moves their `last_mention_seq`, and their
conversation lists are told (events.mention). Done after the message is published, never
on its send's path (services.messages)."""

from __future__ import annotations

import functools

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from chat import events
from chat.models import Participant
from parley import dbcalls

# At most this many distinct names of one message are looked up (a body could name hundreds).
MENTIONS_MAX = 50


# One statement: members only (the join), never back, never the sender; who moved comes back.
_MARK_SQL = (
    "UPDATE {participant} SET last_mention_seq = %s "
    "WHERE conversation_id = %s AND last_mention_seq < %s AND user_id <> %s "
    "AND user_id IN (SELECT {user_pk} FROM {user} WHERE {username} IN ({{names}})) "
    "RETURNING user_id"
)


@functools.cache
def _mark_sql() -> str:
    """Tables and columns by the models' names; quoted identifiers, never input."""
    User = get_user_model()
    q = connection.ops.quote_name
    return _MARK_SQL.format(
        participant=q(Participant._meta.db_table),
        user=q(User._meta.db_table),
        user_pk=q(User._meta.pk.column),
        username=q(User._meta.get_field(User.USERNAME_FIELD).column),
    )


def mentions_mark(*, conversation_id: int, sender_id: int, names: list[str], seq: int) -> list[int]:
    """Moves the mention marker of the participants named in message `seq` (never back, never
    the sender's own) in one statement. Returns the ids of those whose marker moved: only
    members count. Runs on a database thread (services.messages schedules it)."""
    names = list(dict.fromkeys(names))[:MENTIONS_MAX]
    if not names:
        return []
    sql = _mark_sql().format(names=", ".join(["%s"] * len(names)))
    with connection.cursor() as cursor:
        cursor.execute(sql, [seq, conversation_id, seq, sender_id, *names])
        return sorted(row[0] for row in cursor.fetchall())


async def mentions_notify(
    *, conversation_id: int, sender_id: int, names: list[str], seq: int
) -> list[int]:
    """mentions_mark from the event loop, then each mentioned member's conversation lists
    are told (events.mention). Returns who was marked."""
    marked = await dbcalls.db(mentions_mark, slot_wait=settings.CHAT_DB_CONNECT_WAIT_SECONDS)(
        conversation_id=conversation_id, sender_id=sender_id, names=names, seq=seq
    )
    for user_id in marked:
        await events.broadcast(
            events.mention(user_id=user_id, conversation_id=conversation_id, seq=seq)
        )
    return marked
