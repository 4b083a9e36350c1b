"""A mapping that keeps at most a given number of entries, dropping the one used least
recently: the control channels a registry or a relay keeps for the nodes it hears."""

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLru(OrderedDict[K, V]):
    """An OrderedDict whose `remember` and `touch` keep the most recently used entries
    last and drop the first once there are more than `limit`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: K, value: V) -> None:
        """Keep `value` under `key` as the most recently used entry."""
        self[key] = value
        self.touch(key)

    def touch(self, key: K) -> None:
        """Mark `key` as just used (it must be there); drop the oldest beyond the limit."""
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
