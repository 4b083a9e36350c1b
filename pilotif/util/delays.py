"""How long things waited, kept as a histogram of fixed size: buckets that grow by
BUCKET_GROWTH from SMALLEST_S, so a quantile is known to within that factor whatever
the count. The control shell keeps one for the datagrams it answers as it reads them (a
heartbeat's wait in the socket's queue), and logs it when it stops."""

import math
from collections import Counter
from typing import Final

SMALLEST_S: Final = 1e-5
"""Waits up to this fall in the first bucket."""
BUCKET_GROWTH: Final = 1.25
"""Each bucket's upper bound over the one before: quantiles within 25%."""
_LOG_GROWTH: Final = math.log(BUCKET_GROWTH)


class DelayHistogram:
    """Waits in seconds, counted by bucket."""

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0
        self.max_s = 0.0

    def add(self, delay_s: float) -> None:
        """Count one wait (a negative one, from a clock step, counts as the smallest)."""
        self.count += 1
        if delay_s <= SMALLEST_S:
            self._buckets[0] += 1
            return
        self._buckets[math.ceil(math.log(delay_s / SMALLEST_S) / _LOG_GROWTH)] += 1
        self.max_s = max(self.max_s, delay_s)

    def quantile(self, fraction: float) -> float:
        """The upper bound of the bucket that holds the `fraction` quantile (0 if
        nothing was counted)."""
        wanted = fraction * self.count
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= wanted:
                return min(SMALLEST_S * BUCKET_GROWTH**bucket, self.max_s)
        return 0.0

    def quantile_ms(self, fraction: float) -> float:
        """`quantile` in milliseconds, to the microsecond (for a log line)."""
        return round(self.quantile(fraction) * 1000, 3)
