"""The forwarder of relay messages (0x51), one for the registry and the standalone relays:
the limit per address, the sender known by the address it sends from, the destination's
address, and the owner's authorize rule (the registry asks its store whether the two
trust each other; a relay checks the sender's tickets). Whatever it drops it counts.
"""

from collections import Counter
from typing import Final, Protocol

from pilotif.control.gate import ControlGate, Outgoing
from pilotif.control.ratelimit import TokenBuckets
from pilotif.control.wire import WireError, pack_relay, unpack_relay
from pilotif.wg.events import Endpoint

RELAY_PACKETS_PER_S: Final = 20_000.0
RELAY_BURST_PACKETS: Final = 40_000.0
RELAY_BYTES_PER_S: Final = 25_000_000.0
RELAY_BURST_BYTES: Final = 50_000_000.0
"""What one ip:port may send through a relay (the registry's, or a standalone one)."""


class Routes(Protocol):
    """Who is where, as the owner of a forwarder knows it, and its authorize rule."""

    def sender_at(self, source: Endpoint, now: float) -> bytes | None:
        """The key of the node that sends from `source` (None: no node known there)."""

    def endpoint_of(self, sender: bytes, destination: bytes, now: float) -> Endpoint | None:
        """Where `destination` is, if both it and `sender` may relay now (None: offline)."""

    def authorized(self, sender: bytes, destination: bytes, now: float) -> bool:
        """Whether `sender` may reach `destination` through us."""


class RelayLimit:
    """Relay messages per ip:port (packets and bytes, each a token bucket), and their
    parsing; what it refuses is counted in `counters`."""

    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters
        self._packets = TokenBuckets(RELAY_PACKETS_PER_S, RELAY_BURST_PACKETS)
        self._bytes = TokenBuckets(RELAY_BYTES_PER_S, RELAY_BURST_BYTES)

    def take(self, data: bytes, source: Endpoint, now: float) -> tuple[bytes, bytes] | None:
        """The destination key and inner datagram of a relay message from `source`;
        None if it is over the limit or malformed."""
        if not (self._packets.allow(source, now) and self._bytes.allow(source, now, len(data))):
            self.counters["relay_rate_limited"] += 1
            return None
        try:
            return unpack_relay(data)
        except WireError:
            self.counters["relay_malformed"] += 1
            return None


class Forwarder:
    """Relays a message to the node it names, as `routes` allow; counts in `counters`
    what it carried (`relayed_packets`, `relayed_bytes`) and what it dropped."""

    def __init__(self, counters: Counter[str], gate: ControlGate, routes: Routes) -> None:
        self.counters = counters
        self._gate = gate
        self._routes = routes
        self._limit = RelayLimit(counters)

    def forward(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        """What to send for one relay message from `source`: the inner datagram to its
        destination, the notice that `source` is unknown, or nothing."""
        taken = self._limit.take(data, source, now)
        if taken is None:
            return []
        destination, inner = taken
        sender = self._routes.sender_at(source, now)
        if sender is None:
            return self._gate.unknown_source(source, now)
        target = self._routes.endpoint_of(sender, destination, now)
        if target is None:
            self.counters["relay_offline"] += 1
            return []
        if not self._routes.authorized(sender, destination, now):
            self.counters["relay_not_trusted"] += 1
            return []
        self.counters["relayed_packets"] += 1
        self.counters["relayed_bytes"] += len(inner)
        return [(pack_relay(sender, inner), target)]
