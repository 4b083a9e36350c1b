"""Token buckets per source (an address, a key) that bound how much work one source gets.

Memory is bounded too: past `max_sources` the least recently used bucket is forgotten
(a forgotten source starts again with a full bucket, still limited from then on).
"""

from collections import OrderedDict
from collections.abc import Hashable
from typing import Final

DEFAULT_MAX_SOURCES: Final = 65536


class TokenBuckets:
    """One bucket per source: `rate_per_s` tokens refill each second, up to `burst`."""

    def __init__(
        self, rate_per_s: float, burst: float, max_sources: int = DEFAULT_MAX_SOURCES
    ) -> None:
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._max_sources = max_sources
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def tokens(self, source: Hashable, now: float) -> float:
        """How many tokens the source's bucket holds now (none are taken)."""
        return self._refilled(*self._buckets.get(source, (self._burst, now)), now)

    def allow(self, source: Hashable, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens from the source's bucket if it has them; whether it had."""
        tokens = self._refilled(*self._buckets.pop(source, (self._burst, now)), now)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self._max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def _refilled(self, tokens: float, updated: float, now: float) -> float:
        return min(self._burst, tokens + max(0.0, now - updated) * self._rate_per_s)
