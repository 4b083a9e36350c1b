"""Per-peer limits of the agent services, so one trusted peer cannot take what all share.

- Rates: `TokenBuckets` (pilotif.control.ratelimit), one bucket per peer, re-exported
  here; `allow(peer, now, cost)` with a cost of 1 counts requests, a cost in bytes counts
  bytes.
- Quotas: `Quota` holds what a peer has at once (connections, subscriptions, files in
  flight, bytes reserved) against a cap per peer and a cap for all peers together; what
  is taken is given back when it ends.
- Logs: `PeerLog` writes a peer's refusals as one structured line each, at most
  LOG_LINES_PER_MIN a minute per peer (and says how many it left out), so one peer cannot
  make the log grow without bound.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

from pilotif.control.ratelimit import TokenBuckets
from pilotif.util.logs import log_event

__all__ = ["LOG_LINES_PER_MIN", "PeerLog", "Quota", "TokenBuckets"]

LOG_LINES_PER_MIN: Final = 6.0
LOG_BURST_LINES: Final = 6.0
_SECONDS_PER_MIN: Final = 60.0


class Quota:
    """Amounts held per peer, at most `per_peer` each and `total` for all together."""

    def __init__(self, per_peer: int, total: int | None = None) -> None:
        self.per_peer = per_peer
        self.total = total
        self._held: Counter[str] = Counter()
        self._all = 0

    def take(self, peer: str, amount: int = 1) -> bool:
        """Hold `amount` for `peer` if it fits under both caps; whether it did."""
        if self._held[peer] + amount > self.per_peer:
            return False
        if self.total is not None and self._all + amount > self.total:
            return False
        self._held[peer] += amount
        self._all += amount
        return True

    def give_back(self, peer: str, amount: int = 1) -> None:
        """Release what `take` held (never below zero)."""
        given = min(amount, self._held[peer])
        self._all -= given
        left = self._held[peer] - given
        if left > 0:
            self._held[peer] = left
        else:
            del self._held[peer]

    def held(self, peer: str) -> int:
        return self._held[peer]

    def held_by_all(self) -> int:
        return self._all


class PeerLog:
    """Warnings about what peers did, rate-limited per peer; see the module docstring."""

    def __init__(
        self,
        lines_per_min: float = LOG_LINES_PER_MIN,
        burst: float = LOG_BURST_LINES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = TokenBuckets(lines_per_min / _SECONDS_PER_MIN, burst)
        self._clock = clock
        self._left_out: Counter[str] = Counter()

    def warn(self, event: str, peer: str, **fields: object) -> bool:
        """Log `event` for `peer` unless it had its lines this minute; whether it logged."""
        if not self._limit.allow(peer, self._clock()):
            self._left_out[peer] += 1
            return False
        left_out = self._left_out.pop(peer, 0)
        if left_out:
            fields["lines_left_out"] = left_out
        log_event(event, level=logging.WARNING, peer=peer, **fields)
        return True
