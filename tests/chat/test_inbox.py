"""chat.inbox: the conversation list's socket, with unread counts, live and caught up,
against the real Redis layer and Postgres."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from chat import services
from chat.models import Message
from tests.factories import communicator
from tests.helpers.frames import Inbox
from tests.helpers.ws import open_socket, room, send

pytestmark = pytest.mark.django_db(transaction=True)


async def test_unread_counts_follow_messages_and_read_markers():
    from chat import selectors

    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    for i in range(3):
        await send(alice, f"m{i}")
    await alice_in.wait_seqs([1, 2, 3])

    @sync_to_async
    def unread(user):
        return {r.conversation.pk: r.unread for r in selectors.conversation_list(user)}

    assert (await unread(users[1]))[conversation.pk] == 3
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1], after=0)
    await bob_in.wait_seqs([1, 2, 3])
    await bob.send_to(text_data=json.dumps({"type": "read", "seq": 2}))
    for _ in range(50):
        if (await unread(users[1]))[conversation.pk] == 1:
            break
        await asyncio.sleep(0.05)
    assert (await unread(users[1]))[conversation.pk] == 1
    # a read marker beyond what the socket was sent is clamped
    await bob.send_to(text_data=json.dumps({"type": "read", "seq": 999}))
    await bob_in.quiet(0.3)
    assert (await unread(users[1]))[conversation.pk] == 0
    assert await sync_to_async(Message.objects.count)() == 3
    await alice.disconnect()
    await bob.disconnect()


async def test_inbox_updates_live_with_unread_counts():

    conversation, users, cookies = await room()
    inbox_comm = communicator("/ws/inbox", cookies[1])
    assert (await inbox_comm.connect(timeout=5))[0]
    inbox = Inbox(inbox_comm)
    alice, _, _ = await open_socket(conversation.pk, cookies[0])
    await send(alice, "ping")
    row = await inbox.wait_text(f'id="conv-{conversation.pk}"')
    assert 'data-unread="1"' in row and "ping" in row
    assert 'hx-swap-oob="afterbegin:#conversation-list"' in row
    await send(alice, "pong")
    await inbox.wait_text('data-unread="2"')
    await alice.disconnect()
    await inbox_comm.disconnect()


async def test_inbox_catches_up_on_what_changed_between_render_and_connect():
    import time as _time

    conversation, users, cookies = await room()
    rendered_at = int(_time.time() * 1000)
    # stored after the page was rendered, before its socket joined anything
    await sync_to_async(services.message_create)(
        conversation_id=conversation.pk, sender=users[0], body="in between"
    )
    inbox_comm = communicator(f"/ws/inbox?since={rendered_at}", cookies[1])
    assert (await inbox_comm.connect(timeout=5))[0]
    inbox = Inbox(inbox_comm)
    row = await inbox.wait_text(f'id="conv-{conversation.pk}"')
    assert "in between" in row and 'data-unread="1"' in row
    await inbox_comm.disconnect()
    # and a bad or absent `since` just means no catch-up
    for path in ("/ws/inbox?since=abc", "/ws/inbox?since=99999999999999999999"):
        comm = communicator(path, cookies[1])
        assert (await comm.connect(timeout=5))[0]
        await comm.disconnect()
