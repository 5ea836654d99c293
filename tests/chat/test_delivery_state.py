"""chat.delivery.SocketCursor, driven step by step: what a socket sends of what its hub
hands it. Rows are (sequence, frame)."""

from __future__ import annotations

from chat.delivery import Offer, SocketCursor


def rows(*seqs: int) -> list[tuple[int, str]]:
    return [(seq, f"<m{seq}>") for seq in seqs]


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
