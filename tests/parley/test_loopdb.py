"""parley.loopdb and services.message_store: a send's store on the event loop's own Postgres
connections, against the real Postgres."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from django.db import OperationalError

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
