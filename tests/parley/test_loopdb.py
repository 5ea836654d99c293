"""parley.loopdb and services.message_store: a send's store on the event loop's own Postgres
connections, against the real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import psycopg
import pytest
from django.db import OperationalError
from prometheus_client import REGISTRY

from chat import services
from chat.models import Conversation, Message
from parley import dbcalls, loopdb
from tests.factories import make_conversation, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh(settings):
    settings.CHAT_DB_STORE_CONNECTIONS = 2
    dbcalls.gate.reset()
    yield
    loopdb.close_all_idle()
    dbcalls.gate.reset()


@pytest.fixture
def chat():
    a, b = make_user(), make_user()
    return make_conversation(a, b), a


async def test_a_send_is_stored_on_the_loop_with_the_frame_the_thread_renders(chat):
    conv, a = chat
    assert loopdb.enabled()
    cid = uuid.uuid4()
    seq, frame, created, *_ = await dbcalls.store(
        services.message_create_and_render, services.message_store
    )(conv.pk, a.pk, a.get_username(), "<b>hi</b>", cid)
    assert (seq, created) == (1, True)
    assert f'data-client-id="{cid}"' in frame and "&lt;b&gt;hi&lt;/b&gt;" in frame
    # The page resends it (its confirmation was lost): stored once, the same frame again,
    # and the same frame the database thread's version renders for it.
    assert (await services.message_store(conv.pk, a.pk, a.get_username(), "x", cid))[:3] == (
        1,
        frame,
        False,
    )
    from asgiref.sync import sync_to_async

    thread = await sync_to_async(services.message_create_and_render)(
        conv.pk, a.pk, a.get_username(), "x", cid
    )
    assert thread[:3] == (1, frame, False)
    # Without a client id every send is a new message, with the next number.
    assert (await services.message_store(conv.pk, a.pk, a.get_username(), "two", None))[0] == 2
    assert await Message.objects.filter(conversation=conv).acount() == 2


async def test_a_send_to_a_conversation_that_is_gone_says_so(chat):
    _conv, a = chat
    with pytest.raises(Conversation.DoesNotExist):
        await services.message_store(987654321, a.pk, a.get_username(), "hi", uuid.uuid4())


async def test_stores_to_different_conversations_overlap(chat):
    """One conversation's store waits on its row lock; another conversation's goes ahead on
    the second connection instead of queueing behind it."""
    conv, a = chat
    from asgiref.sync import sync_to_async

    other = await sync_to_async(make_conversation)(a, await sync_to_async(make_user)())
    locker = await psycopg.AsyncConnection.connect(**loopdb._connect_params())
    try:
        await locker.execute("SELECT 1 FROM chat_conversation WHERE id = %s FOR UPDATE", [conv.pk])
        blocked = asyncio.ensure_future(
            services.message_store(conv.pk, a.pk, a.get_username(), "waits", uuid.uuid4())
        )
        started = time.monotonic()
        seq, *_ = await asyncio.wait_for(
            services.message_store(other.pk, a.pk, a.get_username(), "goes", uuid.uuid4()), 5
        )
        assert seq == 1 and not blocked.done()
        assert time.monotonic() - started < 2
        await locker.rollback()
        assert (await asyncio.wait_for(blocked, 5))[0] == 1
    finally:
        await locker.close()


async def test_when_every_connection_stays_busy_a_send_is_refused_as_busy_in_bounded_time(
    chat, settings
):
    conv, a = chat
    settings.CHAT_DB_STORE_CONNECTIONS = 1
    pool = loopdb.loop_connections()
    store = dbcalls.store(services.message_create_and_render, services.message_store)
    async with pool.connection():  # the only one, lent out and kept
        waiting = asyncio.ensure_future(store(conv.pk, a.pk, a.get_username(), "hi", None))
        await asyncio.sleep(0.2)
        assert dbcalls.gate.queue_delay() >= 0.1  # what admission refuses new sends on
        started = time.monotonic()
        with pytest.raises(dbcalls.DatabaseBusy):
            await waiting
        assert time.monotonic() - started < 2  # the pool's timeout (1 s), not longer
    assert dbcalls.gate.queue_delay() == 0
    assert not dbcalls.gate.down  # busy is not down: the next send goes ahead
    assert (await store(conv.pk, a.pk, a.get_username(), "hi", None))[0] == 1


async def test_a_send_on_connections_the_server_dropped_is_stored_once_on_a_fresh_one(chat):
    """A Postgres restart ends every connection: the next send with a client id is stored
    on a fresh one; one without (it cannot be retried safely) fails, and the next works."""
    conv, a = chat
    await services.message_store(conv.pk, a.pk, a.get_username(), "before", uuid.uuid4())
    pool = loopdb.loop_connections()
    assert len(pool.idle) == 1

    async def drop_every_store_connection() -> None:
        pids = [c.info.backend_pid for c in pool.idle]
        killer = await psycopg.AsyncConnection.connect(**loopdb._connect_params())
        try:
            for pid in pids:
                await killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            await killer.close()

    await drop_every_store_connection()
    seq, _frame, created, *_ = await services.message_store(
        conv.pk, a.pk, a.get_username(), "after", uuid.uuid4()
    )
    assert (seq, created) == (2, True)
    await drop_every_store_connection()
    with pytest.raises(OperationalError):
        await services.message_store(conv.pk, a.pk, a.get_username(), "lost", None)
    assert (await services.message_store(conv.pk, a.pk, a.get_username(), "next", None))[0] == 3
    assert pool.opened == len(pool.idle) == 1


async def test_with_no_store_connections_sends_are_stored_on_the_database_thread(chat, settings):
    conv, a = chat
    settings.CHAT_DB_STORE_CONNECTIONS = 0
    assert not loopdb.enabled()
    store = dbcalls.store(services.message_create_and_render, services.message_store)
    assert (await store(conv.pk, a.pk, a.get_username(), "hi", None))[0] == 1
    assert loopdb.loop_connections().opened == 0


@contextlib.asynccontextmanager
async def conversation_locked(conversation_id: int):
    """Holds the conversation's row lock (as a store in progress does) until the block ends."""
    locker = await psycopg.AsyncConnection.connect(**loopdb._connect_params())
    try:
        await locker.execute(
            "SELECT 1 FROM chat_conversation WHERE id = %s FOR UPDATE", [conversation_id]
        )
        yield
        await locker.rollback()
    finally:
        await locker.close()


def queued(conversation_id: int) -> int:
    """Sends to the conversation waiting for their turn (behind the store in progress)."""
    return len(services.messages._conversation_stores().queues.get(conversation_id, ()))


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def batch_counts() -> tuple[float, float]:
    """Statements and sends the batches stored so far (parley_store_batch_size)."""
    count = REGISTRY.get_sample_value("parley_store_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("parley_store_batch_size_sum") or 0.0
    return count, total


def send(user, conv, text: str, client_id: uuid.UUID | None = None) -> asyncio.Future:
    return asyncio.ensure_future(
        services.message_store(conv.pk, user.pk, user.get_username(), text, client_id)
    )


@contextlib.asynccontextmanager
async def behind_a_store(conv, first: tuple, *others: tuple):
    """The send `first` (user, text[, client id]) takes the conversation's row and waits on
    its lock; `others` queue behind it, one after another. Yields their futures (first's
    first) while the row stays locked; the stores go ahead when the block ends."""
    async with conversation_locked(conv.pk):
        futures = [send(first[0], conv, *first[1:])]
        await until(lambda: taken(conv.pk))
        for n, (user, *rest) in enumerate(others, start=1):
            futures.append(send(user, conv, *rest))
            await until(lambda n=n: queued(conv.pk) == n)
        yield futures


@pytest.mark.parametrize(("limit", "statements"), [(4, 2), (3, 3)])
async def test_sends_queued_behind_a_store_go_together_up_to_the_batch_limit(
    chat, settings, limit, statements
):
    """A first send holds the conversation's row; four more queue behind it and are stored
    in arrival order, CHAT_DB_STORE_BATCH at most in one statement: at the bound (4) in one,
    past it (3) in two."""
    conv, a = chat
    settings.CHAT_DB_STORE_BATCH = limit
    before = batch_counts()
    sends = [(a, f"m{i}", uuid.uuid4()) for i in range(5)]
    async with behind_a_store(conv, *sends) as futures:
        pass
    stored = await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert [s.seq for s in stored] == [1, 2, 3, 4, 5]
    assert all(s.created for s in stored)
    count, total = batch_counts()
    assert (count - before[0], total - before[1]) == (statements, 5)
    rows = [m async for m in Message.objects.filter(conversation=conv).order_by("seq")]
    assert [(m.seq, m.body) for m in rows] == [(i + 1, f"m{i}") for i in range(5)]
    await conv.arefresh_from_db()
    assert (conv.last_seq, conv.last_message_preview) == (5, "m4")
    for s, m in zip(stored, rows, strict=True):
        assert f'id="msg-{m.pk}"' in s.frame and f'data-seq="{m.seq}"' in s.frame


def _tasks():
    return services.messages._conversation_stores().tasks


def taken(conversation_id: int) -> bool:
    """The conversation's store in progress has taken every send queued so far."""
    return conversation_id in _tasks() and queued(conversation_id) == 0


async def test_an_outsider_in_a_batch_is_refused_and_the_members_numbers_stay_gapless(chat):
    """The batch checks each sender in the statement that writes, as one send does."""
    conv, a = chat
    from asgiref.sync import sync_to_async

    outsider = await sync_to_async(make_user)()
    sends = [(a, "one"), (a, "two"), (outsider, "not a member"), (a, "three")]
    async with behind_a_store(conv, *sends) as (first, mine, theirs, last):
        pass
    assert (await first).seq == 1
    with pytest.raises(Conversation.DoesNotExist):
        await theirs
    assert [(await mine).seq, (await last).seq] == [2, 3]
    await conv.arefresh_from_db()
    assert (conv.last_seq, conv.last_message_preview) == (3, "three")
    assert not await Message.objects.filter(sender=outsider).aexists()


async def test_a_resend_in_a_batch_is_confirmed_once_and_the_others_are_stored(chat):
    """A page resends a stored message (its confirmation was lost) while others queue; it
    also resends one still queued. Each is stored once; a resend gets the stored number."""
    conv, a = chat
    stored_before, twice = uuid.uuid4(), uuid.uuid4()
    earlier = await services.message_store(conv.pk, a.pk, a.get_username(), "x", stored_before)
    sends = [(a, "first"), (a, "x again", stored_before), (a, "new", twice), (a, "new", twice)]
    async with behind_a_store(conv, *sends) as (first, resend, new, again):
        pass
    assert (await first).seq == 2
    resent, stored_new, stored_again = await resend, await new, await again
    assert (resent.seq, resent.created, resent.frame) == (1, False, earlier.frame)
    assert (stored_new.seq, stored_new.created) == (3, True)
    assert (stored_again.seq, stored_again.created, stored_again.frame) == (
        3,
        False,
        stored_new.frame,
    )
    assert await Message.objects.filter(conversation=conv).acount() == 3


async def test_a_send_whose_sender_stopped_waiting_is_not_stored_and_the_rest_are(chat):
    """A socket closes while its send waits for its turn: that send is dropped before its
    statement, the ones around it keep consecutive numbers."""
    conv, a = chat
    sends = [(a, "first"), (a, "kept"), (a, "dropped"), (a, "also kept")]
    async with behind_a_store(conv, *sends) as (first, kept, dropped, also):
        dropped.cancel()
    assert [(await first).seq, (await kept).seq, (await also).seq] == [1, 2, 3]
    assert dropped.cancelled()
    bodies = [m.body async for m in Message.objects.filter(conversation=conv).order_by("seq")]
    assert bodies == ["first", "kept", "also kept"]
    await until(lambda: not _tasks() and queued(conv.pk) == 0)
