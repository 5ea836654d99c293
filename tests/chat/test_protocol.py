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


def _stack_headroom(limit: int = 200) -> int:
    """How many more Python calls fit on the stack from here (at most `limit`)."""

    def down(n: int) -> int:
        return n if n >= limit else down(n + 1)

    try:
        return down(0)
    except RecursionError:
        return 0


def test_a_hostile_nesting_depth_leaves_the_stack_for_whatever_runs_during_its_parse():
    """A collection during the parse runs finalizers on the parser's stack: with the frame
    parsed to the recursion limit they failed (a dead socket's cleanup, say). Now the frame is
    refused before any deep parse, and a collection meanwhile has room to run."""
    import gc

    headroom: list[int] = []

    def during_collection(phase: str, info: dict) -> None:
        if phase == "start":
            headroom.append(_stack_headroom())

    threshold = gc.get_threshold()
    gc.callbacks.append(during_collection)
    gc.set_threshold(1)  # a collection at every allocation, so one runs inside the parse
    try:
        for hostile in ("[" * 4000 + "]" * 4000, '{"a":' * 4000 + "1" + "}" * 4000):
            with pytest.raises(FrameError, match="expected a JSON object"):
                parse_frame(hostile, 100_000)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(during_collection)
    assert headroom and min(headroom) >= 100


def test_brackets_inside_text_and_a_flat_object_with_headers_are_not_depth():
    text = "[{" * 2000 + " ]]}"
    frame = parse_frame(json.dumps({"chat_message": text, "HEADERS": {"HX-Request": "true"}}), MAX)
    assert frame == SendMessage(text, None)
    nested = json.dumps({"chat_message": "x", "a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]})  # 17 deep
    with pytest.raises(FrameError, match="expected a JSON object"):
        parse_frame(nested, MAX)


@pytest.mark.parametrize("filler", ['\\"', '"\\', '\\\\"', '"a'])
def test_the_depth_count_reads_a_frame_once_whatever_its_quotes_and_backslashes(filler):
    """Counting depth is one pass over the frame: a pattern that tried every quote as the
    start of a string spent ~0.6 s on 10 KB of `\\"` pairs, and on the 1 MB here would
    run for hours (the suite's timeout fails it); one pass takes milliseconds."""
    hostile = "[]" * 20 + '"' + filler * (1_000_000 // len(filler))
    with pytest.raises(FrameError, match="expected a JSON object"):
        parse_frame(hostile, 2_000_000)
