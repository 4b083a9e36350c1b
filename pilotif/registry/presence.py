"""Where each node is, as the registry last heard it: the public endpoint it registered
from and when (online for ONLINE_WINDOW_S after), its public endpoint of the other IP
family (a dual-stack node tells us that one with `family_endpoint`: it talks to us over
one family, but a peer may reach it only over the other), which node each endpoint
belongs to (relay messages are known by their source), and the round trip it last
reported."""

from collections.abc import Iterator
from typing import Final

from pilotif.net.transport import transport_of
from pilotif.wg.events import Endpoint

ONLINE_WINDOW_S: Final = 60.0
"""A node is online if it registered (heartbeat) this recently."""
MAX_RTT_MS: Final = 2_000
"""The largest round trip a node may report; longer ones count as this."""


class Presence:
    """See the module docstring; `now` is wall-clock seconds."""

    def __init__(self) -> None:
        self._seen: dict[bytes, tuple[Endpoint, float]] = {}
        self._owners: dict[Endpoint, bytes] = {}
        self._rtt_ms: dict[bytes, int] = {}
        self._other: dict[bytes, Endpoint] = {}

    def note_seen(self, key: bytes, endpoint: Endpoint, now: float) -> None:
        """The node registered from `endpoint` at `now` (its endpoint of the other family,
        if it was of this family, is superseded)."""
        previous = self._seen.get(key)
        if previous is not None and self._owners.get(previous[0]) == key:
            del self._owners[previous[0]]
        self._seen[key] = (endpoint, now)
        self._owners[endpoint] = key
        other = self._other.get(key)
        if other is not None and transport_of(other) == transport_of(endpoint):
            del self._other[key]

    def note_other_family(self, key: bytes, endpoint: Endpoint) -> bool:
        """The node told us `endpoint` is its public endpoint of the family it does not
        register over; False (nothing kept) if it has not registered, or `endpoint` is of
        the family it registers over (one endpoint per family: the registered one wins)."""
        seen = self._seen.get(key)
        if seen is None or transport_of(seen[0]) == transport_of(endpoint):
            return False
        self._other[key] = endpoint
        return True

    def other_family_endpoint(self, key: bytes) -> Endpoint | None:
        """The node's public endpoint of the other family (None: none known)."""
        return self._other.get(key)

    def endpoint(self, key: bytes) -> Endpoint | None:
        """Where the node last registered from (None: never, since we started)."""
        seen = self._seen.get(key)
        return None if seen is None else seen[0]

    def owner(self, endpoint: Endpoint) -> bytes | None:
        """The node that last registered from `endpoint`."""
        return self._owners.get(endpoint)

    def online(self, key: bytes, now: float) -> bool:
        """Whether the node registered within ONLINE_WINDOW_S."""
        seen = self._seen.get(key)
        return seen is not None and now - seen[1] <= ONLINE_WINDOW_S

    def seen_since(self, key: bytes, since: float) -> bool:
        """Whether the node registered at or after `since`."""
        seen = self._seen.get(key)
        return seen is not None and seen[1] >= since

    def nodes_online(self, now: float) -> int:
        """How many nodes have registered within ONLINE_WINDOW_S."""
        return sum(1 for _, seen_s in self._seen.values() if now - seen_s <= ONLINE_WINDOW_S)

    def last_seen(self) -> Iterator[tuple[bytes, float]]:
        """Each node's key and when it last registered."""
        return ((key, seen_s) for key, (_, seen_s) in self._seen.items())

    def report_rtt(self, key: bytes, rtt_ms: object) -> None:
        """Keep the round trip a node reported (`rtt_ms` of any request), if it is one."""
        if type(rtt_ms) is int and rtt_ms >= 0:
            self._rtt_ms[key] = min(rtt_ms, MAX_RTT_MS)

    def one_way_ms(self, key: bytes) -> float:
        """Half the node's reported round trip (0 if it reported none)."""
        return self._rtt_ms.get(key, 0) / 2

    def forget(self, key: bytes) -> None:
        """Forget all of a node (it expired)."""
        seen = self._seen.pop(key, None)
        if seen is not None and self._owners.get(seen[0]) == key:
            del self._owners[seen[0]]
        self._rtt_ms.pop(key, None)
        self._other.pop(key, None)
