"""What the consumer tests share: a conversation with logged-in members, a socket on it
through the whole ASGI application (WebsocketCommunicator, the real Redis layer), and the
messages stored."""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async

from chat.models import Message
from tests.factories import communicator, make_conversation, make_user, session_cookie
from tests.helpers.frames import Inbox


@sync_to_async
def room(n: int = 2, title: str = ""):
    users = [make_user() for _ in range(n)]
    conversation = make_conversation(*users, title=title)
    return conversation, users, [session_cookie(u) for u in users]


async def open_socket(
    conversation_id: int,
    cookie: bytes | None,
    after: int | None = None,
    origin: bytes | None = b"http://localhost",
):
    path = f"/ws/chat/{conversation_id}" + (f"?after={after}" if after is not None else "")
    comm = communicator(path, cookie, origin=origin)
    connected, _ = await comm.connect(timeout=5)
    return comm, connected, Inbox(comm)


def send(comm, text: str, client_id: str | None = None):
    payload = {"chat_message": text, "HEADERS": {"HX-Request": "true"}}
    if client_id:
        payload["client_id"] = client_id
    return comm.send_to(text_data=json.dumps(payload))


@sync_to_async
def stored(conversation_id: int) -> list[tuple[int, str]]:
    return list(
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("seq")
        .values_list("seq", "body")
    )
