"""chat.protocol: every client frame the page may send, and the error each bad one gets."""

from __future__ import annotations

import json
import uuid

import pytest

from chat.protocol import FrameError, Read, SendMessage, Typing, parse_frame

MAX = 10_000


def test_a_message_with_and_without_a_client_id():
    cid = uuid.uuid4()
    frame = parse_frame(json.dumps({"chat_message": "hi", "client_id": str(cid)}), MAX)
    assert frame == SendMessage("hi", cid) and frame.cid == str(cid)
    assert parse_frame('{"type": "message", "chat_message": "hi", "client_id": ""}', MAX) == (
        SendMessage("hi", None)
    )


def test_typing_and_read_markers():
    assert parse_frame('{"type": "typing"}', MAX) == Typing()
    assert parse_frame('{"type": "read", "seq": "12"}', MAX) == Read(12)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, "Binary frames are not supported; send JSON text."),
        ("x" * (MAX + 1), "Frame too large."),
        ("{not json", "Malformed message: expected a JSON object."),
        ("[1, 2]", "Malformed message: expected a JSON object."),
        ("[" * 4000 + "]" * 4000, "Malformed message: expected a JSON object."),  # too deep
        ('{"type": "message"}', "Malformed message: the chat_message field is missing."),
        (
            '{"chat_message": "x", "client_id": "nope"}',
            "Malformed message: client_id must be a UUID.",
        ),
        ('{"type": "read", "seq": "x"}', "Malformed message: seq must be an integer."),
        ('{"type": "read", "seq": 1e999}', "Malformed message: seq must be an integer."),
        ('{"type": "shout"}', "Unknown message type."),
    ],
)
def test_each_bad_frame_gets_its_own_error(text, error):
    with pytest.raises(FrameError) as refused:
        parse_frame(text, MAX)
    assert str(refused.value) == error
