"""The retransmission timeout of RFC 6298: smoothed round trip and its variation from
samples, the timeout with a floor and a ceiling, doubled on each expiry (backoff) and
reset by the next sample. Karn's rule is its caller's: only segments sent once are
timed (tcp_connection.py clears the timed segment when it retransmits)."""

from typing import Final

ALPHA: Final = 1 / 8
"""Gain of the smoothed round trip."""
BETA: Final = 1 / 4
"""Gain of the round trip's variation."""
K: Final = 4
"""How many variations the timeout keeps above the smoothed round trip."""
CLOCK_GRANULARITY_S: Final = 0.001
"""G: the clock we are given is fine; one millisecond keeps the variation's term real."""


class RtoEstimator:
    """RFC 6298 section 2, and section 5's backoff."""

    def __init__(self, initial_s: float, min_s: float, max_s: float) -> None:
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self._min_s = min_s
        self._max_s = max_s
        self._base_s = initial_s
        self.backoffs = 0
        """Expiries since the last sample (each doubled the timeout)."""

    @property
    def rto_s(self) -> float:
        """The timeout to arm now."""
        return min(self._base_s * float(2**self.backoffs), self._max_s)

    def sample(self, rtt_s: float) -> None:
        """A round trip measured on a segment sent once (Karn)."""
        rtt_s = max(rtt_s, 0.0)
        if self.srtt_s is None:
            self.srtt_s = rtt_s
            self.rttvar_s = rtt_s / 2
        else:
            self.rttvar_s = (1 - BETA) * self.rttvar_s + BETA * abs(self.srtt_s - rtt_s)
            self.srtt_s = (1 - ALPHA) * self.srtt_s + ALPHA * rtt_s
        base = self.srtt_s + max(CLOCK_GRANULARITY_S, K * self.rttvar_s)
        self._base_s = min(max(base, self._min_s), self._max_s)
        self.backoffs = 0

    def back_off(self) -> None:
        """The timer expired: the next timeout is twice as long (up to the ceiling)."""
        if self._base_s * (2**self.backoffs) < self._max_s:
            self.backoffs += 1
