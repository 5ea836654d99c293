"""Past capacity a send is refused to its sender at once, with its client_id and a retry hint,
and nothing is stored; once the process keeps up, the same send is stored once (parley.admission).
Real Postgres and Redis; the overload is real too: a loop that runs late, a busy DB thread."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from asgiref.sync import sync_to_async

from parley import dbcalls
from tests.helpers.ws import open_socket, room, send, stored
from tests.parley.test_metrics import value

pytestmark = pytest.mark.django_db(transaction=True)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def retry_hint(error: str) -> float:
    return float(error.split('data-retry-after="', 1)[1].split('"', 1)[0])


async def test_a_send_while_the_event_loop_runs_late_is_refused_then_taken_on_retry(settings):
    settings.CHAT_OVERLOAD_LAG_SECONDS = 0.05
    settings.CHAT_OVERLOAD_RETRY_SECONDS = 0.2
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    refused = value("parley_messages_refused_total", reason="lag")
    cid = str(uuid.uuid4())
    from parley.admission import admission

    time.sleep(0.3)  # noqa: ASYNC251 - the overload itself: this loop runs 300 ms late
    await wait_until(lambda: admission().current_lag() > settings.CHAT_OVERLOAD_LAG_SECONDS)
    await send(alice, "too late", client_id=cid)
    err = await alice_in.wait_text('id="chat-error"')
    assert cid in err and "data-retry-after=" in err and "busy" in err
    assert value("parley_messages_refused_total", reason="lag") == refused + 1
    assert await stored(conversation.pk) == []
    await wait_until(lambda: admission().current_lag() < settings.CHAT_OVERLOAD_LAG_SECONDS)
    await asyncio.sleep(retry_hint(err))  # what the page does: waits the hint
    await send(alice, "too late", client_id=cid)
    assert await bob_in.wait_seqs([1]) == [1]
    assert await alice_in.wait_seqs([1]) == [1]
    assert await stored(conversation.pk) == [(1, "too late")]
    await alice.disconnect()
    await bob.disconnect()


@contextlib.asynccontextmanager
async def busy_database_thread():
    """The database thread held by a slow call until the block ends: the real overload that
    makes calls, and then stores, wait (store_wait)."""
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def occupy() -> None:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=30)

    blocker = asyncio.ensure_future(dbcalls.db(occupy)())
    try:
        yield
    finally:
        release.set()
        await blocker


async def test_a_send_behind_a_long_database_queue_is_refused_in_milliseconds(settings):
    settings.CHAT_OVERLOAD_STORE_WAIT_SECONDS = 0.2
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    bob, _, bob_in = await open_socket(conversation.pk, cookies[1])
    from parley.admission import admission

    async with busy_database_thread():
        await send(alice, "first, waits its turn", client_id=str(uuid.uuid4()))
        await wait_until(lambda: dbcalls.gate.queue_delay() > 0.2)
        await wait_until(lambda: admission().refusing == "store_wait")  # judged once a tick
        refused = value("parley_messages_refused_total", reason="store_wait")
        cid = str(uuid.uuid4())
        started = time.monotonic()
        await send(bob, "second", client_id=cid)
        err = await bob_in.wait_text(cid)
        took = time.monotonic() - started
        assert "data-retry-after=" in err and took < 1.0  # not after the queue: at once
        assert value("parley_messages_refused_total", reason="store_wait") == refused + 1
    assert await alice_in.wait_seqs([1]) == [1]  # the one that was taken is not lost
    assert await bob_in.wait_seqs([1]) == [1]
    assert await stored(conversation.pk) == [(1, "first, waits its turn")]
    await alice.disconnect()
    await bob.disconnect()


async def test_sends_are_refused_while_broadcasts_arrive_late_and_taken_once_they_do_not(
    settings,
):
    """Broadcasts reaching this process seconds later than their publisher's usually do
    (queues in the layer or behind a busy loop elsewhere): accepting more would only make
    every delivery later."""
    from chat import services
    from parley.admission import admission
    from tests.chat.test_delivery import broadcast

    settings.CHAT_OVERLOAD_DELIVERY_SECONDS = 0.5
    settings.CHAT_OVERLOAD_RETRY_SECONDS = 0.2
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    create = sync_to_async(services.message_create)
    late, _ = await create(conversation_id=conversation.pk, sender=users[1], body="late")
    await broadcast(late, published_at=time.time())  # the publisher's usual delay: none
    assert await alice_in.wait_seqs([1]) == [1]

    async def keep_arriving_late() -> None:  # published 3 s before it got here, again and again
        while True:
            await broadcast(late, published_at=time.time() - 3.0)
            await asyncio.sleep(0.02)

    lateness = asyncio.ensure_future(keep_arriving_late())
    await wait_until(lambda: admission().delay > settings.CHAT_OVERLOAD_DELIVERY_SECONDS)
    cid = str(uuid.uuid4())
    await send(alice, "now?", client_id=cid)
    err = await alice_in.wait_text(cid)
    assert "data-retry-after=" in err
    lateness.cancel()
    await wait_until(lambda: admission().delay < settings.CHAT_OVERLOAD_DELIVERY_SECONDS)
    await asyncio.sleep(retry_hint(err))  # what the page does: waits the hint
    await send(alice, "now?", client_id=cid)
    assert await alice_in.wait_seqs([1, 2]) == [1, 2]
    await alice.disconnect()


@pytest.mark.parametrize("skew", [-0.8, 0.8, 30.0])
async def test_a_peer_whose_clock_is_off_makes_no_send_refused(settings, skew):
    """A publisher whose clock is `skew` seconds behind (or ahead) stamps every broadcast
    that much early (or late): the delay is measured against its own usual one, so nothing
    is refused here however far off its clock is."""
    from chat import services
    from parley.admission import admission
    from tests.chat.test_delivery import broadcast

    settings.CHAT_OVERLOAD_DELIVERY_SECONDS = 0.5
    conversation, users, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    create = sync_to_async(services.message_create)
    message, _ = await create(conversation_id=conversation.pk, sender=users[1], body="skewed")
    for _ in range(30):  # a steady stream from the skewed peer, with the usual small delays
        await broadcast(message, published_at=time.time() - skew)
        await asyncio.sleep(0.01)
    assert await alice_in.wait_seqs([1]) == [1]
    await wait_until(lambda: not admission().delays)  # a tick took the last of them in
    assert admission().delay < 0.1
    cid = str(uuid.uuid4())
    await send(alice, "taken", client_id=cid)
    assert await alice_in.wait_seqs([1, 2]) == [1, 2]
    assert not any("data-retry-after" in f for f in alice_in.frames)
    await alice.disconnect()


def test_peer_delays_are_each_publishers_excess_over_its_fastest():
    from parley.admission import BASELINE_WINDOW_SECONDS, PeerDelays

    peers = PeerDelays()
    assert peers.excess("a", 5.0, now=0.0) == 0.0  # first seen: its offset, nothing queued
    assert peers.excess("a", 5.4, now=1.0) == pytest.approx(0.4)
    assert peers.excess("b", -0.8, now=1.0) == 0.0  # another peer, its clock ahead
    assert peers.excess("b", -0.7, now=2.0) == pytest.approx(0.1)
    # A faster delivery lowers the baseline; an old baseline ages out over two windows.
    assert peers.excess("a", 4.9, now=2.0) == 0.0
    later = 2 * BASELINE_WINDOW_SECONDS + 10
    peers.excess("a", 7.0, now=BASELINE_WINDOW_SECONDS + 5)
    assert peers.excess("a", 7.0, now=later) == 0.0  # a clock that stepped: re-learned


async def test_a_send_whose_frame_waited_too_long_in_its_socket_queue_is_refused(settings):
    """The tuned input queue stamps each frame on arrival; a send that waited behind its socket's
    earlier frames longer than CHAT_OVERLOAD_QUEUE_SECONDS is refused, a fresh one is not."""
    from parley.admission import admission
    from parley_runtime.frames import received_at
    from parley_runtime.websocket import InputQueue

    settings.CHAT_OVERLOAD_QUEUE_SECONDS = 0.3
    queue = InputQueue()
    queue.put_nowait({"type": "websocket.receive", "text": "{}"})
    frame = queue.get_nowait()
    assert admission().refusal(received_at(frame)) is None
    assert admission().refusal(received_at(frame) - 1.0) == "queued"


async def test_past_capacity_a_send_costs_no_render_and_no_store(settings, monkeypatch):
    """While the process refuses, a send is answered before its text is looked at: a
    fragment made once with its client_id filled in, no template rendered, nothing stored,
    no Redis call. The overload is real: the database thread held by a slow call."""
    from chat import fragments, services
    from parley.admission import admission

    settings.CHAT_OVERLOAD_STORE_WAIT_SECONDS = 0.2
    conversation, _, cookies = await room()
    alice, _, alice_in = await open_socket(conversation.pk, cookies[0])
    async with busy_database_thread():
        queued = asyncio.ensure_future(dbcalls.db(lambda: None)())  # waits behind it
        await wait_until(lambda: admission().refusing == "store_wait")
        fragments.busy_html("warm", 1.0)  # the one render, done once per process
        renders, stores = [], []
        render = fragments._render
        monkeypatch.setattr(
            fragments,
            "_render",
            lambda t, c: (t == "chat/partials/error.html" and renders.append(t)) or render(t, c),
        )
        monkeypatch.setattr(services, "message_send", lambda **kw: stores.append(kw))
        refused = value("parley_messages_refused_total", reason="store_wait")
        ids = [str(uuid.uuid4()) for _ in range(5)]
        for cid in ids:
            await send(alice, "x" * 100, client_id=cid)
        for cid in ids:
            err = await alice_in.wait_text(cid)
            assert 0 < retry_hint(err) <= 45 and fragments.BUSY_TEXT in err
        assert (renders, stores) == ([], [])
        assert value("parley_messages_refused_total", reason="store_wait") == refused + 5
    await queued
    await alice.disconnect()


def test_the_busy_fragment_is_the_error_fragment_the_template_renders():
    from chat import fragments

    cid = str(uuid.uuid4())
    assert fragments.busy_html(cid, 2.3) == fragments.error_html(
        fragments.BUSY_TEXT, client_id=cid, retry_after=2.3
    )
    assert fragments.busy_html(None, 2.0) == fragments.error_html(
        fragments.BUSY_TEXT, retry_after=2.0
    )
