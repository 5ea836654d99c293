"""WebsocketAuthMiddleware: the user behind a websocket, from the session cookie, with
Django's rules (the same as Channels' AuthMiddlewareStack)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.sessions.models import Session

from tests.helpers.ws import open_socket, room

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_member_with_a_valid_session_gets_in():
    conversation, _, cookies = await room()
    comm, connected, _ = await open_socket(conversation.pk, cookies[0])
    assert connected
    await comm.disconnect()


@pytest.mark.parametrize(
    "cookie",
    [None, b"sessionid=not-a-session", b"sessionid=", b"other=1; sessionid", b"\xff\xfe=\x00"],
)
async def test_no_session_or_a_bogus_one_is_refused_as_unauthenticated(cookie):
    conversation, _, _ = await room()
    comm, _, inbox = await open_socket(conversation.pk, cookie)
    assert await inbox.wait_close() == 4401
    assert inbox.frames == []


async def test_a_session_from_before_a_password_change_is_refused_and_flushed():
    conversation, users, cookies = await room()

    @sync_to_async
    def change_password():
        users[0].set_password("a brand new password")
        users[0].save()
        return Session.objects.count()

    sessions_before = await change_password()
    comm, _, inbox = await open_socket(conversation.pk, cookies[0])
    assert await inbox.wait_close() == 4401
    # the stale session is deleted, as Django's own auth middleware does on HTTP
    assert await sync_to_async(Session.objects.count)() == sessions_before - 1
    # the other member's session still works
    comm, connected, _ = await open_socket(conversation.pk, cookies[1])
    assert connected
    await comm.disconnect()


async def test_a_logged_out_session_is_refused():
    conversation, _, cookies = await room()
    await sync_to_async(Session.objects.all().delete)()
    comm, _, inbox = await open_socket(conversation.pk, cookies[0])
    assert await inbox.wait_close() == 4401
