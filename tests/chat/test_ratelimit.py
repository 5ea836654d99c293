"""chat.ratelimit.SendLimits on a clock the test moves."""

from __future__ import annotations

from chat.ratelimit import (
    FRAME_RATE_FACTOR,
    RATE_WINDOW_SECONDS,
    TYPING_THROTTLE_SECONDS,
    SendLimits,
)


def test_messages_past_the_limit_are_refused_until_the_window_moves_on():
    limits = SendLimits(messages=3)
    assert [limits.message_ok(now=t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limits.strikes == 1
    assert limits.message_ok(now=RATE_WINDOW_SECONDS + 0.5)  # the first one left the window
    assert limits.strikes == 0


def test_refusals_in_a_row_past_the_limit_are_a_flood():
    limits = SendLimits(messages=2)
    for t in range(2):
        limits.message_ok(now=t)
    for _ in range(2):
        limits.message_ok(now=3)
        assert not limits.flooding
    limits.message_ok(now=3)
    assert limits.flooding


def test_frames_of_any_kind_are_bounded_at_a_multiple_of_the_message_limit():
    limits = SendLimits(messages=2)
    bound = 2 * FRAME_RATE_FACTOR
    assert all(limits.frame_ok(now=i * 0.01) for i in range(bound))
    assert not limits.frame_ok(now=1)
    assert limits.frame_ok(now=RATE_WINDOW_SECONDS + 1)


def test_typing_is_broadcast_at_most_once_per_throttle_interval():
    limits = SendLimits(messages=30)
    assert limits.typing_ok(now=100)
    assert not limits.typing_ok(now=100 + TYPING_THROTTLE_SECONDS / 2)
    assert limits.typing_ok(now=100 + TYPING_THROTTLE_SECONDS)
