"""Seeds and inspects the stack's database for the browser tests.

Runs in its own process with the stack's environment (the pytest process is configured for
the unit-test database) for the whole test session, so Django starts once. It reads one JSON
request per line on stdin and answers each with one JSON line on stdout:

    {"op": "users", "names": ["ann", "bob"]}         -> {"ann": {"id": 1, "session": "..."}}
    {"op": "conversation", "names": [...], "messages": 200}  -> {"id": 7}
    {"op": "messages", "conversation": 7}             -> [[seq, sender, body], ...]
    {"op": "read_marker", "conversation": 7, "username": "ann"}  -> 12
    {"op": "rewind", "conversation": 7, "to_seq": 5}  -> "<epoch>" (an older dump restored)
    {"op": "new_epoch"}                               -> 0 (history_new_epoch, as a restore)
    {"op": "epoch", "conversation": 7}                -> "<epoch>"
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from importlib import import_module

import django


def users(names: list[str]) -> dict:
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )

    # The engine the stack serves with, so its pages read these sessions as their own.
    SessionStore = import_module(settings.SESSION_ENGINE).SessionStore  # noqa: N806
    out = {}
    for name in names:
        user = get_user_model().objects.create_user(username=name)  # no password: session only
        # What django.contrib.auth.login() stores, without a password hash per user.
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        out[name] = {"id": user.pk, "session": session.session_key}
    return out


def conversation(names: list[str], messages: int = 0, title: str = "") -> dict:
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from chat.models import Conversation, Message, Participant

    people = list(get_user_model().objects.filter(username__in=names).order_by("username"))
    assert len(people) == len(names), f"unknown users in {names}"
    now = timezone.now()
    with transaction.atomic():
        conv = Conversation.objects.create(title=title)
        Participant.objects.bulk_create([Participant(conversation=conv, user=u) for u in people])
        Message.objects.bulk_create(
            Message(
                conversation=conv,
                sender=people[seq % len(people)],
                seq=seq,
                body=f"history message {seq:03d}",
                created_at=now - timedelta(seconds=messages - seq),
            )
            for seq in range(1, messages + 1)
        )
        if messages:
            conv.last_seq = messages
            conv.last_message_at = now
            conv.last_message_preview = f"history message {messages:03d}"
            conv.last_message_sender = people[messages % len(people)].username
            conv.save()
        # Seeded history counts as read: unread counts then start from zero.
        Participant.objects.filter(conversation=conv).update(last_read_seq=messages)
    return {"id": conv.pk}


def messages(conversation: int) -> list:
    from chat.models import Message

    return [
        [seq, sender, body]
        for seq, sender, body in Message.objects.filter(conversation_id=conversation)
        .order_by("seq")
        .values_list("seq", "sender__username", "body")
    ]


def read_marker(conversation: int, username: str) -> int:
    from chat.models import Participant

    return Participant.objects.get(
        conversation_id=conversation, user__username=username
    ).last_read_seq


def rewind(conversation: int, to_seq: int) -> int:
    """What restoring an older dump leaves: the messages after `to_seq` gone, the counter
    back at `to_seq`, the epoch unchanged. Returns the epoch."""
    from chat.models import Conversation, Message

    Message.objects.filter(conversation_id=conversation, seq__gt=to_seq).delete()
    Conversation.objects.filter(pk=conversation).update(last_seq=to_seq)
    return Conversation.objects.get(pk=conversation).epoch


def new_epoch() -> int:
    """The last step of `make restore` (manage.py history_new_epoch)."""
    import io

    from django.core.management import call_command

    call_command("history_new_epoch", stdout=io.StringIO())  # stdout is our protocol
    return 0


def epoch(conversation: int) -> str:
    from chat.models import Conversation

    return Conversation.objects.get(pk=conversation).epoch


OPS = {
    "rewind": rewind,
    "new_epoch": new_epoch,
    "epoch": epoch,
    "users": users,
    "conversation": conversation,
    "messages": messages,
    "read_marker": read_marker,
}


def main() -> None:
    # stdout carries the answers: everything else printed, log lines included (the runtime
    # selection at startup), goes to stderr.
    answers, sys.stdout = sys.stdout, sys.stderr
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": OPS[request.pop("op")](**request)}
        except Exception:
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
