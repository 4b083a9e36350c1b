"""Control-message counters that rise across restarts without trusting the wall clock.

A node and the registry seal every control message with a counter that the other side
accepts only once and only above what it saw before (also after a restart). A file in
the state dir holds a value above every counter handed out so far: each start begins
there and writes it LEASE higher, and `cover` writes again before the counters reach
the written value. A clock that jumps, forwards or back, changes nothing.

The very first start (no file yet) begins at the clock in nanoseconds, once: earlier
versions sealed with the clock, and their peers remember those counters.
"""

import time
from pathlib import Path
from typing import Final

from pilotif.util.files import StateFileError, read_state_file, write_private_file

LEASE: Final = 2**32
"""How many counters one write covers (a node seals a few per minute)."""
MAX_COUNTER: Final = 2**63 - 1


class CounterLease:
    """The counter file of one sealing party; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first = self._read()
        self._covered = -1
        self.cover(self.first)

    def cover(self, counter: int) -> None:
        """Make sure a restart begins above `counter` (the highest sealed or about to be)."""
        if counter + LEASE // 2 < self._covered:
            return
        self._covered = min(counter + LEASE, MAX_COUNTER)
        write_private_file(self.path, f"{self._covered}\n")

    def _read(self) -> int:
        text = read_state_file(self.path)
        if text is None:
            return time.time_ns()
        value = text.strip()
        if not value.isdigit() or int(value) > MAX_COUNTER:
            raise StateFileError(
                f"{self.path} does not hold a counter; delete it (the next start then "
                "counts from the clock, and the other side says if that is too low)"
            )
        return int(value)
