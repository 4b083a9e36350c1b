"""Pacing, sans-IO: how much a sender may release now at a rate, and when what it holds
back may go (BBR sends at pacing_gain x its bandwidth estimate; Linux's internal pacing
releases a few segments per timer rather than a window at once).

A token bucket in bytes: credit accrues at the rate since the last look, up to
PACING_CREDIT_S of it (a timer that fires late loses nothing; an idle sender gets no
more than that at once). A release is at most PACING_TRAIN_S of the rate (one large
segment, a train of full ones cut natively), never less than MIN_TRAIN_SEGMENTS
segments, in whole segments unless it is all that waits. What is sent, paced or not (a
fast retransmission goes at once), is charged to the credit. A rate of 0 means unpaced
(NewReno, or no bandwidth measured yet): everything may go. `now` is passed in; no
sleeps, no clock.
"""

from typing import Final

PACING_TRAIN_S: Final = 0.001
"""One release carries what the rate sends in this long."""
PACING_CREDIT_S: Final = 0.01
"""Credit builds up to what the rate sends in this long: an event loop comes back late
(asyncio's timers wake at a millisecond's resolution, a busy CPU later still), and a
sender that got back less than it waited for would fall below the rate."""
MIN_TRAIN_SEGMENTS: Final = 2
"""A release may always carry this many segments (a slow rate still sends pairs)."""
MIN_WAIT_S: Final = 1e-6
"""The least wait for credit (the credit computed in floating point may fall short of
a segment by a rounding error: without it, the release would be due again at once)."""


class Pacer:
    """The pacing credit of one sender."""

    def __init__(self) -> None:
        self._credit = 0.0
        """Bytes that may leave (negative: sent ahead of the rate)."""
        self._at: float | None = None
        """When the credit was last brought up to date (None: not paced so far)."""
        self.release_at: float | None = None
        """When what was held back may go (None: nothing is held back)."""

    def allowance(self, wanted: int, segment_bytes: int, rate: float, now: float) -> int:
        """How many of `wanted` bytes may leave now at `rate` bytes a second (0:
        unpaced): all of them, or whole segments of `segment_bytes`; 0 when not one may
        go yet, and then `release_at` says when a train can."""
        self.release_at = None
        if rate <= 0:
            self._at = None
            return wanted
        train = max(rate * PACING_TRAIN_S, MIN_TRAIN_SEGMENTS * segment_bytes)
        cap = max(rate * PACING_CREDIT_S, train)
        if self._at is None:
            self._credit = train  # pacing starts: a train may go at once
        else:
            self._credit = min(self._credit + (now - self._at) * rate, cap)
        self._at = now
        allowed = int(min(wanted, self._credit, train))
        if allowed < wanted:
            allowed -= allowed % segment_bytes
        if allowed <= 0:  # below one segment, or spent ahead (a fast retransmission)
            needed = min(wanted, train)
            self.release_at = now + max((needed - self._credit) / rate, MIN_WAIT_S)
            return 0
        return allowed

    def spend(self, sent: int) -> None:
        """`sent` bytes left (paced or not)."""
        if self._at is not None:
            self._credit -= sent
