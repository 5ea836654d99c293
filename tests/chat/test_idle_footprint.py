"""What an open, idle chat socket keeps waiting: idle sockets are many, and their memory is
what bounds how many one daphne process holds (issue 9, loadtest/experiments)."""

from __future__ import annotations

import asyncio
import types

import pytest

import parley_runtime
from tests.helpers.ws import open_socket, room

pytestmark = pytest.mark.django_db(transaction=True)

# Between the server and the consumer's dispatch loop: the access log (it logs when the
# socket ends) and the auth layer; every other layer handed over (parley_runtime.routing).
# The loop awaits the client's next frame directly, through the access log's receive: no
# task, and no layer channel (the socket's events come through its process's hubs).
IDLE_CHAIN = [
    "AccessLogMiddleware.__call__",
    "WebsocketAuthMiddleware.__call__",
    "_tuned_loop",  # parley_runtime.consumer: the consumer's dispatch loop
    "_Connection.receive",  # parley.logging: notes the close code
]
SERVER_RECEIVE = ["Queue.get"]  # the test communicator's queue (daphne's: SlimQueue.get)


def await_chain(task: asyncio.Future) -> tuple[list[str], object]:
    names, awaited = [], task.get_coro()
    while isinstance(awaited, types.CoroutineType):
        names.append(awaited.cr_code.co_qualname)
        awaited = awaited.cr_await
    return names, awaited


async def test_an_idle_socket_waits_in_one_chain_of_coroutines_on_one_future():
    if parley_runtime.mode() != "tuned":
        pytest.skip("the tuned runtime's footprint (docs/runtime.md)")
    conversation, _, cookies = await room()
    comm, connected, _ = await open_socket(conversation.pk, cookies[0])
    assert connected
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    # The consumer settles after the connect (backlog, presence); wait for it to idle.
    while await_chain(comm.future)[0] != IDLE_CHAIN + SERVER_RECEIVE and loop.time() < deadline:
        await asyncio.sleep(0.01)
    names, awaited = await_chain(comm.future)
    assert names == IDLE_CHAIN + SERVER_RECEIVE
    # The dispatch loop waits on one future (not an asyncio.wait, which is two coroutines).
    assert type(awaited).__name__ == "FutureIter"
    await comm.disconnect()
