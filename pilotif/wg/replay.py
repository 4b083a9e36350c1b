"""The sliding window that rejects replayed transport counters (whitepaper 5.4.6, RFC 6479).

The window is a ring of 64-bit words as in wireguard-go's replay.go: moving
forward clears whole words, so each packet costs a few integer operations.
One word of the ring is always being recycled, so the usable window is
REPLAY_WINDOW_SIZE - 64 counters behind the newest one.
"""

from typing import Final

from pilotif.wg.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE

_WORD_BITS_LOG2: Final = 6
_WORD_BITS: Final = 1 << _WORD_BITS_LOG2
_BIT_MASK: Final = _WORD_BITS - 1
_RING_WORDS: Final = REPLAY_WINDOW_SIZE // _WORD_BITS
_RING_MASK: Final = _RING_WORDS - 1
WINDOW_SIZE: Final = REPLAY_WINDOW_SIZE - _WORD_BITS
"""How far behind the newest counter a counter is still accepted."""

assert _RING_WORDS & _RING_MASK == 0, "the ring size must be a power of two"


class ReplayWindow:
    """Which transport counters of one receiving key were seen."""

    __slots__ = ("_newest", "_ring")

    def __init__(self) -> None:
        self._ring = [0] * _RING_WORDS
        self._newest = 0

    @property
    def newest(self) -> int:
        """The highest counter marked so far (0 before any)."""
        return self._newest

    def check(self, counter: int) -> bool:
        """Whether `counter` would be accepted; use before decrypting, changes nothing."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter > self._newest:
            return True
        if self._newest - counter > WINDOW_SIZE:
            return False
        word = self._ring[(counter >> _WORD_BITS_LOG2) & _RING_MASK]
        return not (word >> (counter & _BIT_MASK)) & 1

    def update(self, counter: int) -> bool:
        """Mark `counter` as seen after it decrypted; False means it is a replay (drop it)."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        ring = self._ring
        word_index = counter >> _WORD_BITS_LOG2
        if counter > self._newest:
            self._advance(counter)
        elif self._newest - counter > WINDOW_SIZE:
            return False
        slot = word_index & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[slot]
        if old & bit:
            return False
        ring[slot] = old | bit
        return True

    def update_run(self, first: int, last: int) -> None:
        """Mark the consecutive counters `first`..`last` as seen, in one go.

        For a run that `check` accepts as a whole: `newest < first <= last <
        REJECT_AFTER_MESSAGES` (the caller checks). Costs a few operations per 64
        counters instead of per counter.
        """
        ring = self._ring
        last_word = last >> _WORD_BITS_LOG2
        self._advance(last)
        for word in range(
            max(first >> _WORD_BITS_LOG2, last_word - _RING_WORDS + 1), last_word + 1
        ):
            low = max(first, word << _WORD_BITS_LOG2) & _BIT_MASK
            high = min(last, (word << _WORD_BITS_LOG2) | _BIT_MASK) & _BIT_MASK
            ring[word & _RING_MASK] |= ((1 << (high - low + 1)) - 1) << low

    def _advance(self, counter: int) -> None:
        """Make `counter` (newer than any) the newest: the words of the ring between the
        newest's and its own are recycled (cleared)."""
        current = self._newest >> _WORD_BITS_LOG2
        word_index = counter >> _WORD_BITS_LOG2
        if word_index != current:
            ring = self._ring
            for index in range(current + 1, current + 1 + min(word_index - current, _RING_WORDS)):
                ring[index & _RING_MASK] = 0
        self._newest = counter
