"""The Bind: the UDP side of a daemon (wireguard-go's conn.Bind, Tailscale's magicsock).

It owns the UDP sockets and their batching, wraps datagrams for peers reached through
a relay (our home relay, else the registry), and splits what arrives from the registry's
and the relays' addresses into control messages (for the node core) and relayed
WireGuard datagrams (for the overlay device, from a `RelayEndpoint`). Everything else
that arrives goes to the device as it is.
"""

import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pilotif.net.hostport import format_endpoint
from pilotif.net.relay_frame import (
    CONTROL_TYPE,
    PUNCH_OPENER,
    RELAY_TYPE,
    WireError,
    pack_relay,
    unpack_relay,
)
from pilotif.net.udp import UdpSockets
from pilotif.net.udp_batch import UdpBatch
from pilotif.wg.crypto import BytesLike
from pilotif.wg.events import Endpoint, PeerEndpoint, RelayEndpoint
from pilotif.wg.messages import split_coalesced


def endpoint_text(endpoint: PeerEndpoint) -> str:
    """`ip:port` (`[ip6]:port`) of a UDP endpoint, `relay` for a relayed peer."""
    return "relay" if isinstance(endpoint, RelayEndpoint) else format_endpoint(endpoint)


@dataclass
class FromRegistry:
    """What one receive from a registry address held, sorted by who takes it."""

    control: list[bytes] = field(default_factory=list)
    """Control messages and key answers (0x50, 0x52): for the node core."""
    wireguard: list[tuple[bytes, PeerEndpoint]] = field(default_factory=list)
    """WireGuard datagrams, with where they came from (the relay, for a peer): for the
    device."""


class RelayFraming:
    """The Bind's logic without sockets: relay framing and sorting what arrives.

    Relayed datagrams go to the home relay (`use_relays`), else to `registry`: the first
    of `registries` (none for a daemon without a registry), whose replicas are where
    control messages come from (`use_registry` moves to another). `counters` counts
    relayed bytes each way, punch openers, and relay messages dropped as malformed.
    """

    def __init__(self, registries: tuple[Endpoint, ...]) -> None:
        self.registry = registries[0] if registries else None
        self.registries = set(registries)
        self.relay: Endpoint | None = None
        self.relays: set[Endpoint] = set()
        self.counters: Counter[str] = Counter()

    def use_registry(self, endpoint: Endpoint) -> None:
        """Relay through the replica at `endpoint` from now on (when no relay is home)."""
        self.registry = endpoint

    def use_relays(self, home: Endpoint | None, relays: set[Endpoint]) -> None:
        """Relay through `home` (None: the registry); take datagrams from all `relays`."""
        self.relay = home
        self.relays = relays

    def wrap(self, datagram: BytesLike, endpoint: RelayEndpoint) -> tuple[bytes, Endpoint] | None:
        """The datagram for the relay that carries `datagram` to a relayed peer."""
        through = self.relay or self.registry
        if through is None:
            return None
        self.counters["relay_tx_bytes"] += len(datagram)
        return pack_relay(endpoint.peer, datagram), through

    def is_opener(self, buffer: memoryview) -> bool:
        """Whether a receive is a peer's punch opener (counted, then dropped)."""
        if len(buffer) == len(PUNCH_OPENER) and buffer == PUNCH_OPENER:
            self.counters["punch_openers"] += 1
            return True
        return False

    def is_registry(self, source: Endpoint) -> bool:
        """Whether datagrams from `source` need `split_registry` rather than the device."""
        return source in self.registries or source in self.relays

    def split_registry(
        self, buffer: memoryview, segment_size: int, source: Endpoint
    ) -> FromRegistry:
        """Sort the datagrams of one receive from a registry or relay address (`source`)."""
        sorted_ = FromRegistry()
        for view in split_coalesced(buffer, segment_size):
            data = bytes(view)
            if not data:
                continue
            if data[0] < CONTROL_TYPE:
                sorted_.wireguard.append((data, source))
            elif data[0] != RELAY_TYPE:
                sorted_.control.append(data)
            else:
                try:
                    peer, inner = unpack_relay(data)
                except WireError:
                    self.counters["relay_malformed"] += 1
                    continue
                self.counters["relay_rx_bytes"] += len(inner)
                sorted_.wireguard.append((inner, RelayEndpoint(peer)))
        return sorted_


class Bind(RelayFraming):
    """UDP sockets on one port, batched, with the relay as one more kind of endpoint."""

    def __init__(self, port: int | None, registries: tuple[Endpoint, ...] = ()) -> None:
        super().__init__(registries)
        self._sockets = UdpSockets(port)
        self._batch = UdpBatch(self._sockets)
        self.port = self._sockets.port

    def sockets(self) -> list[socket.socket]:
        """The open sockets, to watch for input."""
        return self._sockets.sockets()

    def status(self) -> dict[str, Any]:
        """Which offloads each socket has (`pilotif status`)."""
        return self._batch.status()

    def close(self) -> None:
        """Close the sockets."""
        self._sockets.close()

    # -- sending -----------------------------------------------------------------

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        """Send datagrams in order, wrapping those for relayed peers; the number refused."""
        if not any(isinstance(endpoint, RelayEndpoint) for _, endpoint in datagrams):
            return self._batch.send(datagrams)  # type: ignore[arg-type]
        direct: list[tuple[BytesLike, Endpoint]] = []
        failed = 0
        for datagram, endpoint in datagrams:
            if isinstance(endpoint, RelayEndpoint):
                failed += not self._send_relayed(datagram, endpoint)
            else:
                direct.append((datagram, endpoint))
        return failed + (self._batch.send(direct) if direct else 0)

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        """Send a GSO train (datagrams of `size` bytes back to back, the last may be
        shorter) to one peer endpoint; the number refused."""
        if not isinstance(endpoint, RelayEndpoint):
            return self._batch.send_buffer(train, size, endpoint)
        datagrams = split_coalesced(train, size)
        return sum(not self._send_relayed(datagram, endpoint) for datagram in datagrams)

    def send_control(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> int:
        """Send control datagrams one by one; the number refused."""
        return sum(not self._sockets.send(datagram, to) for datagram, to in datagrams)

    def _send_relayed(self, datagram: BytesLike, endpoint: RelayEndpoint) -> bool:
        wrapped = self.wrap(datagram, endpoint)
        return wrapped is not None and self._sockets.send(*wrapped)

    # -- receiving ---------------------------------------------------------------

    def receive(self, sock: socket.socket) -> tuple[memoryview, int, Endpoint] | None:
        """One receive on `sock` (see `UdpBatch.receive`), or None when none waits."""
        return self._batch.receive(sock)
