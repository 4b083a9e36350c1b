"""The receive side's out-of-order queue: ranges of the sequence space that arrived
ahead of the next expected byte, merged, capped in count (their bytes are inside the
advertised window, which the receive buffer's cap bounds), and the SACK blocks (RFC
2018) that describe them, the most recently changed first. Offsets are absolute
(unwrapped) sequence numbers."""

import bisect


class OutOfOrder:
    """Segments held until the hole before them fills."""

    def __init__(self, max_ranges: int) -> None:
        self._starts: list[int] = []
        self._chunks: list[bytearray] = []
        self._max_ranges = max_ranges
        self._recent: list[int] = []
        """Starts of ranges, most recently changed first (for the SACK blocks' order)."""
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, start: int, data: bytes | memoryview) -> bool:
        """Keep `data` at `start` (overlaps are merged); False if it would make more
        ranges than the cap (then nothing is kept)."""
        end = start + len(data)
        first = bisect.bisect_left(self._starts, start)
        if first > 0 and self._starts[first - 1] + len(self._chunks[first - 1]) >= start:
            first -= 1
        last = first
        while last < len(self._starts) and self._starts[last] <= end:
            last += 1
        if last == first and len(self._starts) >= self._max_ranges:
            return False
        merged_start = min(start, self._starts[first]) if last > first else start
        merged = bytearray()
        if last > first and self._starts[first] < start:
            merged += self._chunks[first][: start - self._starts[first]]
        merged += data
        if last > first:
            tail_start = self._starts[last - 1]
            tail = self._chunks[last - 1]
            if tail_start + len(tail) > end:
                merged += tail[end - tail_start :]
        for index in range(first, last):
            self.bytes -= len(self._chunks[index])
            self._forget(self._starts[index])
        del self._starts[first:last]
        del self._chunks[first:last]
        self._starts.insert(first, merged_start)
        self._chunks.insert(first, merged)
        self.bytes += len(merged)
        self._recent.insert(0, merged_start)
        return True

    def pop_ready(self, next_expected: int) -> tuple[int, bytearray] | None:
        """The range that starts at or before `next_expected` and reaches past it, cut to
        start there; ranges wholly before it are thrown away."""
        while self._starts and self._starts[0] <= next_expected:
            start = self._starts.pop(0)
            chunk = self._chunks.pop(0)
            self.bytes -= len(chunk)
            self._forget(start)
            if start + len(chunk) > next_expected:
                return next_expected, chunk[next_expected - start :]
        return None

    def clear(self) -> None:
        """Forget every range (the connection ended)."""
        self._starts.clear()
        self._chunks.clear()
        self._recent.clear()
        self.bytes = 0

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` (start, end) ranges, the most recently changed first."""
        pairs = zip(self._starts, self._chunks, strict=True)
        ends = {start: start + len(chunk) for start, chunk in pairs}
        return [(start, ends[start]) for start in self._recent[:limit]]

    def _forget(self, start: int) -> None:
        if start in self._recent:
            self._recent.remove(start)
