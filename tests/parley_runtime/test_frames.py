"""parley_runtime.frames: a frame's arrival time beside the ASGI event, never in it."""

from __future__ import annotations

import copy
import json
import pickle
import time

from parley_runtime.frames import ReceivedFrame, received_at
from parley_runtime.websocket import InputQueue

EVENTS = [
    {"type": "websocket.connect"},
    {"type": "websocket.receive", "text": "what is here? 🌍"},
    {"type": "websocket.receive", "bytes": b"what is here? \xe2"},
    {"type": "websocket.disconnect", "code": 1006},
]


def test_the_input_queue_hands_on_each_event_with_the_specs_keys_and_values():
    queue = InputQueue()
    before = time.monotonic()
    for event in EVENTS:
        queue.put_nowait(dict(event))
    out = [queue.get_nowait() for _ in EVENTS]
    assert out == EVENTS
    assert [list(event.items()) for event in out] == [list(event.items()) for event in EVENTS]
    stamps = [received_at(event) for event in out]
    assert stamps[0] is None and stamps[3] is None  # only a client's frames are stamped
    assert before <= stamps[1] <= stamps[2] <= time.monotonic()


def test_a_stamped_frame_is_the_plain_event_to_anything_else():
    queue = InputQueue()
    queue.put_nowait({"type": "websocket.receive", "text": "hi"})
    frame = queue.get_nowait()
    assert isinstance(frame, ReceivedFrame) and not hasattr(frame, "__dict__")
    assert json.dumps(frame) == '{"type": "websocket.receive", "text": "hi"}'
    pickled = pickle.loads(pickle.dumps(frame))  # noqa: S301 (our own bytes)
    for elsewhere in (pickled, copy.copy(frame), copy.deepcopy(frame)):
        assert type(elsewhere) is dict and elsewhere == frame
        assert received_at(elsewhere) is None  # a monotonic stamp means nothing elsewhere


def test_an_event_the_tuned_queue_did_not_take_has_no_arrival_time():
    # The stock runtime's asyncio.Queue, a test communicator: None, and the project's
    # "waited too long in its queue" refusal does not apply.
    assert received_at({"type": "websocket.receive", "text": "hi"}) is None
