"""The replay window accepts each counter once, within the window, below the reject limit."""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pilotif.wg.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE
from pilotif.wg.replay import WINDOW_SIZE, ReplayWindow


@pytest.fixture
def window() -> ReplayWindow:
    return ReplayWindow()


def test_counters_in_order_are_accepted(window: ReplayWindow) -> None:
    for counter in range(3 * WINDOW_SIZE):
        assert window.check(counter)
        assert window.update(counter)


def test_a_duplicate_is_a_replay(window: ReplayWindow) -> None:
    assert window.update(0)
    assert not window.check(0)
    assert not window.update(0)
    assert window.update(5)
    assert not window.update(5)


def test_out_of_order_inside_the_window_is_accepted_once(window: ReplayWindow) -> None:
    newest = 10_000
    assert window.update(newest)
    for counter in (newest - 1, newest - WINDOW_SIZE, 5000, newest - 64):
        assert window.check(counter)
        assert window.update(counter)
        assert not window.update(counter)
    assert window.update(newest + 1)


def test_too_old_is_refused(window: ReplayWindow) -> None:
    newest = 5 * WINDOW_SIZE
    assert window.update(newest)
    assert not window.check(newest - WINDOW_SIZE - 1)
    assert not window.update(newest - WINDOW_SIZE - 1)
    assert not window.update(0)


def test_check_does_not_mark(window: ReplayWindow) -> None:
    assert window.check(7)
    assert window.check(7)
    assert window.update(7)


def test_a_far_jump_forgets_the_old_window(window: ReplayWindow) -> None:
    for counter in range(200):
        window.update(counter)
    far = 10**12
    assert window.update(far)
    assert not window.update(far)
    assert not window.update(199), "now far behind the window"
    # Counters just below the jump were never seen, even though their ring words
    # held old bits before the jump.
    for counter in range(far - WINDOW_SIZE, far, 61):
        assert window.update(counter)


def test_a_jump_of_less_than_the_ring_clears_only_the_passed_words(window: ReplayWindow) -> None:
    for counter in range(0, 640, 3):
        window.update(counter)
    newest = 640 + WINDOW_SIZE // 2
    assert window.update(newest)
    assert not window.update(639), "still inside the window and seen"
    assert window.update(641)
    assert window.update(newest - 1)


def test_the_reject_limit(window: ReplayWindow) -> None:
    last_valid = REJECT_AFTER_MESSAGES - 1
    assert window.update(last_valid)
    assert not window.check(REJECT_AFTER_MESSAGES)
    assert not window.update(REJECT_AFTER_MESSAGES)
    assert not window.update(2**64 - 1)


_WORD_BITS = 64
_RUN_STARTS = st.one_of(
    st.integers(0, 3 * REPLAY_WINDOW_SIZE),
    st.integers(0, 2**40),
    st.integers(REJECT_AFTER_MESSAGES - 4 * REPLAY_WINDOW_SIZE, REJECT_AFTER_MESSAGES - 1),
)
_NEAR = st.integers(1, 2 * _WORD_BITS)
"""A step that stays in the same 64-bit word or crosses into the next ones."""
_AROUND_THE_RING = st.integers(
    REPLAY_WINDOW_SIZE - 2 * _WORD_BITS, REPLAY_WINDOW_SIZE + 2 * _WORD_BITS
)
"""Runs about as long as the ring: the first word and the last share a slot."""
_RUN_LENGTHS = st.one_of(
    _NEAR, _AROUND_THE_RING, st.integers(1, REPLAY_WINDOW_SIZE + 3 * _WORD_BITS)
)


def _mark_behind(window: ReplayWindow, newest: int, stride: int, extra: list[int]) -> None:
    """Mark every `stride`-th counter of the window behind `newest`, the `extra` ones
    (distances behind it), then `newest`."""
    low = max(0, newest - WINDOW_SIZE - 100)
    behind = {*range(newest - stride, low - 1, -stride), *(newest - e for e in extra)}
    for counter in sorted(c for c in behind if c >= 0):
        window.update(counter)
    window.update(newest)


@settings(max_examples=150, deadline=None)
@given(
    newest=_RUN_STARTS,
    stride=st.integers(1, 200),
    extra=st.lists(st.integers(1, WINDOW_SIZE + 100), max_size=20),
    gap=st.one_of(_NEAR, _AROUND_THE_RING, st.integers(1, 3 * REPLAY_WINDOW_SIZE)),
    length=_RUN_LENGTHS,
    follow=_NEAR,
)
def test_update_run_marks_what_update_per_counter_marks(
    newest: int, stride: int, extra: list[int], gap: int, length: int, follow: int
) -> None:
    first = newest + gap
    last = min(first + length - 1, REJECT_AFTER_MESSAGES - 1)
    assume(first <= last)
    by_run, by_counter = ReplayWindow(), ReplayWindow()
    for window in (by_run, by_counter):
        _mark_behind(window, newest, stride, extra)
    assert by_run.newest == by_counter.newest == newest

    by_run.update_run(first, last)
    for counter in range(first, last + 1):
        assert by_counter.update(counter)

    assert by_run.newest == by_counter.newest == last
    assert not any(by_run.check(counter) for counter in range(first, last + 1)[-WINDOW_SIZE:])

    def disagreements() -> list[int]:
        low = max(0, max(by_run.newest, by_counter.newest) - WINDOW_SIZE - 100)
        high = max(by_run.newest, by_counter.newest) + 5
        return [c for c in range(low, high + 1) if by_run.check(c) != by_counter.check(c)]

    assert disagreements() == []
    # What the run marked must also be right for the counters that come next.
    assert by_run.update(last + follow) == by_counter.update(last + follow)
    assert disagreements() == []
