"""Mentions through the sockets (chat.consumers, services.messages, chat.users) against the
real Redis layer and Postgres: a message that names a member by `@username` moves that
member's mention marker after it is published, and their conversation lists are sent their
own row, marked; the send's confirmation never waits for it, and a message without "@"
costs nothing more."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from chat.models import Participant
from chat.services import messages
from tests.factories import communicator
from tests.helpers.frames import Inbox
from tests.helpers.ws import open_socket, room, send

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def markers(conversation_id: int) -> dict[int, int]:
    return dict(
        Participant.objects.filter(conversation_id=conversation_id).values_list(
            "user_id", "last_mention_seq"
        )
    )


async def open_list(cookie: bytes) -> Inbox:
    comm = communicator("/ws/inbox", cookie)
    assert (await comm.connect(timeout=5))[0]
    return Inbox(comm)


async def test_a_mention_marks_the_member_and_reaches_their_list_only():
    conversation, users, cookies = await room(3)
    ann, bob, cy = users
    bob_list, cy_list = await open_list(cookies[1]), await open_list(cookies[2])
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await send(alice, f"hey @{bob.username}, and mail {cy.username}@example.com, @nobody")
    await alice_in.wait_seqs([1])
    own = await bob_list.wait_text("has-mention")
    assert f'id="conv-{conversation.pk}"' in own and 'data-mention-seq="1"' in own
    assert 'data-read-seq="0"' in own and "data-live" not in own
    assert await markers(conversation.pk) == {ann.pk: 0, bob.pk: 1, cy.pk: 0}
    # Cy's list gets the shared live row only: an e-mail address is not a mention.
    await cy_list.wait_text(f'id="conv-{conversation.pk}"')
    await cy_list.quiet(0.5)
    assert not any("has-mention" in f or "data-mention-seq" in f for f in cy_list.frames)
    # Reading past it clears the mark: the read marker's own row says so.
    bob_chat, _, bob_in = await open_socket(conversation.pk, cookies[1], after=0)
    await bob_in.wait_seqs([1])
    await bob_chat.send_to(text_data='{"type": "read", "seq": 1}')
    row = await bob_list.wait_text('data-read-seq="1"')
    assert "has-mention" not in row and 'class="mention-mark" hidden' in row
    for comm in (alice, bob_chat, bob_list.comm, cy_list.comm):
        await comm.disconnect()


async def test_the_confirmation_does_not_wait_for_the_mention_write(monkeypatch):
    conversation, users, cookies = await room(2)
    release = asyncio.Event()
    calls = []

    async def slow_mentions(**kwargs):
        calls.append(kwargs)
        await release.wait()

    monkeypatch.setattr(messages, "mentions_notify", slow_mentions)
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await send(
        alice, f"@{users[1].username} ping", client_id="5b3c1f7e-0f7a-4e1b-9d3c-2a1b0c9d8e7f"
    )
    # Stored, published and confirmed while the mention write has not finished: nothing
    # on the send's path waits for it.
    await alice_in.wait_text('data-client-id="5b3c1f7e-0f7a-4e1b-9d3c-2a1b0c9d8e7f"')
    await asyncio.sleep(0.05)
    assert calls == [
        {
            "conversation_id": conversation.pk,
            "sender_id": users[0].pk,
            "names": [users[1].username],
            "seq": 1,
        }
    ]
    assert len(messages._mention_tasks) == 1
    release.set()
    await asyncio.sleep(0.05)
    assert not messages._mention_tasks
    await alice.disconnect()


async def test_a_message_without_an_at_sign_or_naming_only_its_sender_costs_nothing_more(
    monkeypatch,
):
    conversation, users, cookies = await room(2)
    calls = []

    async def record(**kwargs):
        calls.append(kwargs)

    monkeypatch.setattr(messages, "mentions_notify", record)
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    await send(alice, "no mention here")
    await send(alice, f"note to self @{users[0].username}")
    await send(alice, "mail me: someone@example.com")
    await alice_in.wait_seqs([1, 2, 3])
    await asyncio.sleep(0.1)
    assert calls == [] and not messages._mention_tasks
    await alice.disconnect()
