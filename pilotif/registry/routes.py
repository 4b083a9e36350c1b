"""The registry's rule for relaying (its forwarder's routes): a node is known by the
endpoint it registered from, reachable while both it and the destination are online,
and may reach the nodes it trusts, as the store says, remembered for TRUST_CACHE_S."""

from typing import Final

from pilotif.registry.presence import Presence
from pilotif.registry.store import Store
from pilotif.wg.events import Endpoint

TRUST_CACHE_S: Final = 10.0
"""How long the relay keeps its answer to "do these two trust each other?" (a change
through any replica clears it at once; one made with `registry admin` shows within)."""
MAX_TRUST_CACHE: Final = 100_000
"""Pairs the relay remembers (all are forgotten when it is full)."""


def key_pair(key: bytes, other: bytes) -> tuple[bytes, bytes]:
    """Two nodes' keys in one order (a trust is mutual)."""
    return (key, other) if key < other else (other, key)


class TrustedRoutes:
    """See the module docstring."""

    def __init__(self, presence: Presence, store: Store) -> None:
        self._presence = presence
        self._store = store
        self.trust_cache: dict[tuple[bytes, bytes], tuple[bool, float]] = {}
        """Pairs of nodes the relay asked about: whether they trust each other, until when."""

    def sender_at(self, source: Endpoint, now: float) -> bytes | None:
        """The node that last registered from `source`."""
        return self._presence.owner(source)

    def endpoint_of(self, sender: bytes, destination: bytes, now: float) -> Endpoint | None:
        """Where `destination` is, while both are online."""
        target = self._presence.endpoint(destination)
        online = self._presence.online
        if target is None or not online(sender, now) or not online(destination, now):
            return None
        return target

    def authorized(self, sender: bytes, destination: bytes, now: float) -> bool:
        """Whether two nodes trust each other, as the relay needs it for every packet:
        from memory for TRUST_CACHE_S (a change made through any replica clears it)."""
        pair = key_pair(sender, destination)
        cached = self.trust_cache.get(pair)
        if cached is not None and now < cached[1]:
            return cached[0]
        trusted = self._store.is_trusted(sender, destination)
        if len(self.trust_cache) >= MAX_TRUST_CACHE:
            self.trust_cache.clear()
        self.trust_cache[pair] = (trusted, now + TRUST_CACHE_S)
        return trusted

    def trust_changed(self, key: bytes, other: bytes) -> None:
        """The two nodes' trust changed: ask the store again."""
        self.trust_cache.pop(key_pair(key, other), None)
