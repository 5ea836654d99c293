"""Test data and clients, in one place."""

from __future__ import annotations

import itertools

from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import Conversation, Participant

PASSWORD = "correct-horse-battery"  # noqa: S105
_counter = itertools.count(1)
ORIGIN = b"http://localhost"


def make_user(username: str | None = None, password: str = PASSWORD):
    username = username or f"user{next(_counter)}"
    return get_user_model().objects.create_user(username=username, password=password)


def make_conversation(*users, title: str = "") -> Conversation:
    conversation = Conversation.objects.create(title=title)
    Participant.objects.bulk_create([Participant(conversation=conversation, user=u) for u in users])
    return conversation


def logged_in_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def session_cookie(user) -> bytes:
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={logged_in_client(user).cookies[name].value}".encode()


def communicator(path: str, cookie: bytes | None = None, origin: bytes | None = ORIGIN):
    from config.asgi import application

    headers = [(b"host", b"localhost")]
    if origin is not None:
        headers.append((b"origin", origin))
    if cookie is not None:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)
