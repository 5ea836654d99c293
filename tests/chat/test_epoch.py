"""History epochs: a socket or page whose history is not the database's starts over.
Real Postgres and Redis; a heartbeat every second."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from chat import services
from chat.models import Conversation, Message
from chat.presence import RedisPresence
from tests.helpers.ws import open_socket, room, send

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_beat(settings):
    settings.CHAT_PRESENCE_TTL = 3


@sync_to_async
def rewind(conversation_id: int, to_seq: int) -> str:
    """What an older dump leaves behind: later rows gone, the counter back, the same epoch."""
    Message.objects.filter(conversation_id=conversation_id, seq__gt=to_seq).delete()
    Conversation.objects.filter(pk=conversation_id).update(last_seq=to_seq)
    return Conversation.objects.get(pk=conversation_id).epoch


@sync_to_async
def epoch_of(conversation_id: int) -> str:
    return Conversation.objects.get(pk=conversation_id).epoch


async def five(conversation, cookie):
    alice, _, inbox = await open_socket(conversation.pk, cookie)
    for i in range(5):
        await send(alice, f"m{i}")
    await inbox.wait_seqs([1, 2, 3, 4, 5])
    return alice, inbox


async def test_a_page_of_another_epoch_is_told_to_start_over():
    conversation, _, cookies = await room()
    alice, _ = await five(conversation, cookies[0])
    await alice.disconnect()
    await sync_to_async(services.conversations_new_epoch)()  # as `make restore` ends
    new = await epoch_of(conversation.pk)
    path_after = f"/ws/chat/{conversation.pk}?after=5&epoch=oldepoch"
    from tests.factories import communicator
    from tests.helpers.frames import Inbox

    comm = communicator(path_after, cookies[0])
    assert (await comm.connect(timeout=5))[0]
    inbox = Inbox(comm)
    frame = await inbox.wait_text('id="chat-reset"')
    assert f'data-epoch="{new}"' in frame
    assert inbox.seqs == []  # no replay from a history the page does not have
    await send(comm, "goes on")
    assert await inbox.wait_seqs([6]) == [6]
    await comm.disconnect()


async def test_a_page_claiming_more_than_exists_reloads_alone_and_changes_nothing_shared():
    """A client's claim never changes shared state: `?after=999999999` with the page's own
    epoch, again and again, reloads that page only; the epoch stays, and the other members'
    pages hear nothing of it."""
    conversation, _, cookies = await room()
    alice, alice_in = await five(conversation, cookies[0])
    epoch = await epoch_of(conversation.pk)
    from tests.factories import communicator
    from tests.helpers.frames import Inbox

    for _ in range(3):
        comm = communicator(f"/ws/chat/{conversation.pk}?after=999999999&epoch={epoch}", cookies[1])
        assert (await comm.connect(timeout=5))[0]
        frame = await Inbox(comm).wait_text('id="chat-reset"')
        assert f'data-epoch="{epoch}"' in frame and 'data-reason="ahead"' in frame
        await comm.disconnect()
    assert await epoch_of(conversation.pk) == epoch
    await send(alice, "still the same history")
    await alice_in.wait_seqs([1, 2, 3, 4, 5, 6])
    assert not any("chat-reset" in f for f in alice_in.frames)
    await alice.disconnect()


async def test_a_history_that_went_back_under_what_the_server_noted_starts_a_new_epoch():
    """Evidence the server holds: it noted handing out 5 (the heartbeat's note in Redis), and
    the database now has 2 in the same epoch (an older copy restored, unannounced)."""
    from chat.presence import presence_store

    conversation, _, cookies = await room()
    alice, _ = await five(conversation, cookies[0])
    old = await epoch_of(conversation.pk)
    for _ in range(100):  # a beat every second here (CHAT_PRESENCE_TTL=3)
        if await presence_store().noted_seq(conversation.pk, old) == 5:
            break
        await asyncio.sleep(0.05)
    assert await presence_store().noted_seq(conversation.pk, old) == 5
    await alice.disconnect()
    await rewind(conversation.pk, 2)  # nobody announced it
    from tests.factories import communicator
    from tests.helpers.frames import Inbox

    comm = communicator(f"/ws/chat/{conversation.pk}?after=5&epoch={old}", cookies[0])
    assert (await comm.connect(timeout=5))[0]
    inbox = Inbox(comm)
    frame = await inbox.wait_text('id="chat-reset"')
    new = await epoch_of(conversation.pk)
    assert new != old and f'data-epoch="{new}"' in frame and 'data-reason="restored"' in frame
    await comm.disconnect()


async def test_an_open_socket_starts_over_at_its_heartbeat_and_hears_new_messages():
    """It used to drop the new messages: their numbers were at or below what it had sent."""
    conversation, _, cookies = await room()
    alice, alice_in = await five(conversation, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    old = await rewind(conversation.pk, 2)
    await send(bob, "after the restore")  # seq 3 again
    frame = await alice_in.wait_text('id="chat-reset"', timeout=10)
    new = await epoch_of(conversation.pk)
    assert new != old and f'data-epoch="{new}"' in frame
    await send(bob, "and then")
    await alice_in.wait_text("and then")
    await alice.disconnect()
    await bob.disconnect()


async def test_clients_without_an_epoch_keep_the_old_contract():
    """No epoch in the query (load tests, other clients): an absurd `after` is clamped."""
    conversation, _, cookies = await room()
    alice, _ = await five(conversation, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1], after=10**9)
    await send(alice, "next")
    assert await bob_in.wait_seqs([6]) == [6]
    assert not any("chat-reset" in f for f in bob_in.frames)
    await alice.disconnect()
    await bob.disconnect()


async def test_a_redis_sequence_note_of_another_epoch_is_never_read(settings):
    store = RedisPresence(settings.REDIS_SHARDS)
    await store.note_seq(4242, 3630, "before")
    answers = await store.heartbeat_many({4242: [(1, "chan")]}, {4242: "after"})
    assert answers[4242][1] == 0
    answers = await store.heartbeat_many({4242: [(1, "chan")]}, {4242: "before"})
    assert answers[4242][1] == 3630
