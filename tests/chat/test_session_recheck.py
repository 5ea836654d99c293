"""Sockets whose session ended elsewhere are closed by the process heartbeat (chat.heartbeat),
not only by the logout's broadcast, which is lost while Redis is down. Real Postgres and
Redis; a beat every CHAT_PRESENCE_TTL / 3 seconds (1 s here)."""

from __future__ import annotations

import datetime

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.utils import timezone

from tests.factories import communicator
from tests.helpers.frames import Inbox
from tests.helpers.ws import open_socket, room, send

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_beat(settings):
    settings.CHAT_PRESENCE_TTL = 3


def session_key(cookie: bytes) -> str:
    return cookie.decode().split("=", 1)[1]


@sync_to_async
def end_session(how: str, user, cookie: bytes) -> None:
    key = session_key(cookie)
    if how == "deleted":  # what a logout does to the database while its broadcast is lost
        Session.objects.filter(session_key=key).delete()
    elif how == "expired":
        Session.objects.filter(session_key=key).update(
            expire_date=timezone.now() - datetime.timedelta(seconds=1)
        )
    elif how == "password changed":
        user.set_password("a-new-password-9")
        user.save()
    elif how == "deactivated":
        user.is_active = False
        user.save()


@pytest.mark.parametrize("how", ["deleted", "expired", "password changed", "deactivated"])
async def test_a_socket_whose_session_ended_elsewhere_is_closed_with_4401(how):
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    inbox = communicator("/ws/inbox", cookies[0])
    assert (await inbox.connect(timeout=5))[0]
    inbox_in = Inbox(inbox)
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    await end_session(how, users[0], cookies[0])
    assert await alice_in.wait_close(timeout=10) == 4401
    assert await inbox_in.wait_close(timeout=10) == 4401
    # the other member's socket is untouched
    await bob_in.quiet(1.5 * django_settings.CHAT_PRESENCE_TTL / 3)
    await send(bob, "still open")
    await bob_in.wait_text("still open")  # fails on a close
    await bob.disconnect()


async def test_a_live_session_stays_open_across_beats():
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await alice_in.quiet(3 * django_settings.CHAT_PRESENCE_TTL / 3)  # three beats
    await send(alice, "still open")
    await alice_in.wait_text("still open")  # fails on a close
    await alice.disconnect()
