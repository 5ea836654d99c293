"""chat.stream, driven synchronously: a conversation's order in a process (what arrives,
what is held, what is missing, what a heal fills, a restart), the cut of frames under the
frame limit, the start-over rule, and a socket's cursor."""

from __future__ import annotations

import pytest

from chat.stream import (
    RECENT_LIMIT,
    Offer,
    Order,
    Position,
    Row,
    SocketCursor,
    Verdict,
    frame_bytes,
    frames,
    judge,
    went_back,
)


def rows(*seqs: int) -> list[Row]:
    return [Row(seq, f"<m{seq}>") for seq in seqs]


def started(seq: int = 0, epoch: str = "e1") -> Order:
    order = Order()
    assert order.start(Position(seq, epoch)) == []
    return order


# --- the order --------------------------------------------------------------------------


def test_rows_that_follow_on_are_handed_out_at_once_and_duplicates_never():
    order = started(4)
    assert order.arrive(Row(5, "<m5>")) == rows(5)
    assert order.arrive(Row(5, "<m5>")) == []  # its own broadcast coming back
    assert order.arrive(Row(3, "<m3>")) == []
    assert order.position == Position(5, "e1")
    assert order.missing() is None


def test_a_row_ahead_is_held_until_what_precedes_it_arrives():
    order = started(4)
    assert order.arrive(Row(7, "<m7>")) == []
    assert order.arrive(Row(6, "<m6>")) == []
    assert order.missing() == (4, 5)  # only 5 is missing
    assert order.arrive(Row(5, "<m5>")) == rows(5, 6, 7)  # and the held ones follow on
    assert order.missing() is None and order.held == {}


def test_a_gap_is_read_once_and_filled_in_order():
    order = started(0)
    order.arrive(Row(3, "<m3>"))
    assert order.missing() == (0, 2)
    assert order.fill(rows(1, 2)) == rows(1, 2, 3)
    assert order.fill(rows(1, 2)) == []  # a second read of the same gap hands out nothing
    assert order.position.seq == 3


def test_a_tail_known_to_exist_is_missing_until_read():
    order = started(2)
    order.expect(5)  # the heartbeat: the database has 5
    assert order.missing() == (2, 5)
    assert order.fill(rows(3, 4, 5)) == rows(3, 4, 5)
    assert order.missing() is None


def test_a_database_with_nothing_more_settles_the_gap_with_what_is_held():
    """A Redis note newer than the database (a restore it outlived) expected more: the held
    rows go out as they are and nothing is asked for again."""
    order = started(2)
    order.expect(9)
    order.arrive(Row(5, "<m5>"))
    assert order.settle() == rows(5)
    assert order.missing() is None


def test_rows_before_the_first_read_are_held_then_trimmed_to_it():
    order = Order()
    assert order.arrive(Row(3, "<m3>")) == [] and order.arrive(Row(5, "<m5>")) == []
    assert order.start(Position(3, "e1")) == []  # 3 is in the read; 5 waits for 4
    assert order.missing() == (3, 4)


def test_a_restart_goes_on_from_the_new_history():
    order = started(10)
    order.arrive(Row(11, "<m11>"))
    order.start(Position(3, "e2"))
    assert order.recent_after(0) is None  # nothing of the new history was handed out here
    assert order.arrive(Row(4, "<n4>")) == [Row(4, "<n4>")]
    assert order.position == Position(4, "e2")


def test_recent_rows_serve_a_socket_a_little_behind_and_no_further():
    order = started(0)
    for seq in range(1, RECENT_LIMIT + 11):
        order.arrive(Row(seq, f"<m{seq}>"))
    assert order.recent_after(RECENT_LIMIT + 8) == rows(RECENT_LIMIT + 9, RECENT_LIMIT + 10)
    assert order.recent_after(RECENT_LIMIT + 10) == []
    assert order.recent_after(5) is None  # dropped: read from the database


# --- frames under the limit -------------------------------------------------------------


def test_frames_join_rows_until_the_limit_and_never_past_it():
    parts = ["a" * 40, "b" * 40, "c" * 40, "d" * 10]
    assert frames(parts, 100) == ["a" * 40 + "b" * 40, "c" * 40 + "d" * 10]
    assert frames(parts, 80) == ["a" * 40 + "b" * 40, "c" * 40 + "d" * 10]
    assert frames(parts, 79) == ["a" * 40, "b" * 40, "c" * 40 + "d" * 10]
    assert "".join(frames(parts, 79)) == "".join(parts)  # in order, nothing lost
    assert frames([], 100) == []


def test_frames_count_bytes_on_the_wire_not_characters():
    emoji = "\U0001f600" * 10  # 10 characters, 40 bytes in UTF-8
    assert frame_bytes(emoji) == 40
    assert frames([emoji, emoji], 79) == [emoji, emoji]
    assert frames([emoji, emoji], 80) == [emoji + emoji]


# --- the start-over rule ------------------------------------------------------------------


DB = Position(10, "e1")


@pytest.mark.parametrize(
    ("claim", "server_seen", "expected"),
    [
        (None, 0, (Verdict.REPLAY, "")),  # no epoch: the old contract, `after` clamped
        (Position(7, "e1"), 0, (Verdict.REPLAY, "")),
        (Position(10, "e1"), 0, (Verdict.REPLAY, "")),
        (Position(7, "e0"), 0, (Verdict.RELOAD, "restored")),  # another history
        # The page says it saw 20: only the page reloads, nothing shared changes...
        (Position(20, "e1"), 0, (Verdict.RELOAD, "ahead")),
        (Position(20, "e1"), 10, (Verdict.RELOAD, "ahead")),
        # ...unless this server handed out or noted more than the database has.
        (Position(20, "e1"), 12, (Verdict.NEW_EPOCH, "restored")),
        (Position(0, "e1"), 0, (Verdict.REPLAY, "")),  # 10 behind, the cap is 10
    ],
)
def test_only_what_the_server_holds_starts_a_new_epoch(claim, server_seen, expected):
    assert judge(DB, claim, server_seen, cap=10) == expected


def test_a_page_behind_past_the_cap_reloads():
    assert judge(Position(11, "e1"), Position(0, "e1"), 0, cap=10) == (Verdict.RELOAD, "behind")


def test_a_history_went_back_only_in_its_own_epoch():
    assert went_back(DB, 11, "e1")
    assert not went_back(DB, 10, "e1")
    assert not went_back(DB, 99, "e0")  # a note of another history says nothing of this one


# --- a socket's cursor --------------------------------------------------------------------


def live(last_sent: int, hold_limit: int = 10) -> SocketCursor:
    cursor = SocketCursor(last_sent, hold_limit)
    assert cursor.end_catch_up() == (Offer.SKIP, [])  # nothing was held: live
    return cursor


def test_a_new_socket_holds_what_arrives_until_its_backlog_is_sent():
    cursor = SocketCursor(3, hold_limit=10)
    assert cursor.catching_up
    assert cursor.offer(rows(6, 7)) == (Offer.HOLD, [])
    cursor.sent(rows(4, 5, 6))  # the backlog read reached 6
    assert cursor.end_catch_up() == (Offer.SEND, rows(7))  # 6 is not sent twice
    assert not cursor.catching_up and cursor.last_sent == 7


def test_live_rows_are_sent_once_and_in_order():
    cursor = live(5)
    assert cursor.offer(rows(6)) == (Offer.SEND, rows(6))
    assert cursor.offer(rows(6)) == (Offer.SKIP, [])  # a replayed broadcast
    assert cursor.offer(rows(5, 6, 7, 8)) == (Offer.SEND, rows(7, 8))  # the overlap trimmed
    assert cursor.last_sent == 8


def test_a_gap_starts_a_catch_up_and_holds_the_rows_that_revealed_it():
    cursor = live(5)
    assert cursor.offer(rows(8, 9)) == (Offer.READ, [])
    assert cursor.catching_up
    assert cursor.offer(rows(10)) == (Offer.HOLD, [])
    cursor.sent(rows(6, 7))  # the database's 6 and 7
    assert cursor.end_catch_up() == (Offer.SEND, rows(8, 9, 10))


def test_rows_dropped_while_reading_mean_reading_again():
    cursor = SocketCursor(0, hold_limit=2)
    cursor.offer(rows(3, 4))
    assert cursor.offer(rows(5, 6)) == (Offer.HOLD, [])  # past the hold limit: not kept
    cursor.offer(rows(7))
    cursor.sent(rows(1))  # the read got only as far as 1
    assert cursor.end_catch_up() == (Offer.READ, [])  # 2 missing: read again
    assert cursor.catching_up
    cursor.sent(rows(2, 3, 4, 5, 6, 7))
    assert cursor.end_catch_up() == (Offer.SKIP, [])


def test_a_failed_catch_up_goes_back_to_live_and_a_restore_starts_over():
    cursor = SocketCursor(2, hold_limit=10)
    cursor.offer(rows(3))
    cursor.abandon_catch_up()
    assert not cursor.catching_up
    cursor.start_over(40)
    assert cursor.last_sent == 40
    assert cursor.offer(rows(2, 3)) == (Offer.SKIP, [])  # the old history's numbers
    assert cursor.offer(rows(41)) == (Offer.SEND, rows(41))
