"""The send side's SACK scoreboard (RFC 2018, used as RFC 6675 does): the ranges above
the oldest unacknowledged byte that the peer says it holds, merged and capped in count,
and what follows from them: bytes SACKed, the holes below the highest SACKed byte (lost,
to retransmit first), what the peer lacks when we go back after a timeout. Offsets are
absolute (unwrapped) sequence numbers."""


class Scoreboard:
    """SACKed ranges, sorted and disjoint."""

    def __init__(self, max_ranges: int) -> None:
        self.ranges: list[tuple[int, int]] = []
        self._max_ranges = max_ranges

    def clear(self) -> None:
        """Forget every SACK (after a second retransmission timeout in a row: the peer
        may have reneged, RFC 2018 section 8; kept after one, as Linux keeps it)."""
        self.ranges.clear()

    def add(self, start: int, end: int, una: int, snd_max: int) -> None:
        """A block the peer sent; blocks outside (una, snd_max] are ignored."""
        start = max(start, una)
        if end > snd_max or end <= start:
            return
        merged: list[tuple[int, int]] = []
        for left, right in self.ranges:
            if right < start or left > end:
                merged.append((left, right))
            else:
                start, end = min(start, left), max(end, right)
        merged.append((start, end))
        merged.sort()
        self.ranges = merged[-self._max_ranges :]

    def advance(self, una: int) -> None:
        """The cumulative ACK moved to `una`: forget what is below it."""
        self.ranges = [(max(left, una), right) for left, right in self.ranges if right > una]

    @property
    def sacked_bytes(self) -> int:
        """Bytes the peer holds above the cumulative ACK."""
        return sum(right - left for left, right in self.ranges)

    @property
    def highest(self) -> int | None:
        """The end of the highest SACKed range."""
        return self.ranges[-1][1] if self.ranges else None

    def holes(self, una: int) -> list[tuple[int, int]]:
        """The ranges below the highest SACKed byte that the peer lacks."""
        holes: list[tuple[int, int]] = []
        at = una
        for left, right in self.ranges:
            if left > at:
                holes.append((at, left))
            at = max(at, right)
        return holes

    def sacked_below(self, at: int) -> int:
        """Bytes the peer holds above the cumulative ACK and below `at`."""
        return sum(min(right, at) - left for left, right in self.ranges if left < at)

    def lacking(self, at: int, end: int) -> tuple[int, int]:
        """The first range from `at` on (up to `end`) that the peer does not hold:
        (its start, its end: the next SACKed range's start, or `end`)."""
        for left, right in self.ranges:
            if right <= at:
                continue
            if left > at:
                return at, min(left, end)
            at = right
        return at, max(at, end)

    def holds(self, offset: int) -> bool:
        """Whether the peer SACKed the byte at `offset`."""
        return any(left <= offset < right for left, right in self.ranges)
