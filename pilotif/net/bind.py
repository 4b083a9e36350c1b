"""The Bind: the network side of a daemon (wireguard-go's conn.Bind, Tailscale's magicsock).

`Bind` is the interface the data path and the daemon use: send datagrams (or a GSO train)
to any peer endpoint, whatever its transport (net/transport.py); send control datagrams to
the registry and relays; receive from the sockets it watches and sort what came from a
registry or relay address (net/relay_frame.py). `UdpBind` is the one on UDP sockets; the
tests have a fake.
"""

import socket
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from pilotif.net.hostport import format_endpoint
from pilotif.net.relay_frame import FromRegistry, RelayFraming
from pilotif.net.transport import (
    RelayTransport,
    Transport,
    TransportKind,
    UdpTransport,
    is_udp,
    transport_of,
)
from pilotif.net.udp import UdpSockets
from pilotif.net.udp_batch import UdpBatch
from pilotif.packet.ip import BytesLike
from pilotif.wg.events import Endpoint, PeerEndpoint, RelayEndpoint


def endpoint_text(endpoint: PeerEndpoint) -> str:
    """`ip:port` (`[ip6]:port`) of a UDP endpoint, `relay` for a relayed peer."""
    return "relay" if isinstance(endpoint, RelayEndpoint) else format_endpoint(endpoint)


class Bind(Protocol):
    """What the data path and the daemon ask of the network under the overlay."""

    port: int
    """The local UDP port (peers and the registry send here)."""
    counters: Counter[str]
    """Relayed bytes each way, punch openers, malformed relay messages."""

    def sockets(self) -> list[socket.socket]:
        """The sockets to watch for input."""

    def receive(self, sock: socket.socket) -> tuple[memoryview, int, Endpoint] | None:
        """One receive on `sock`: its buffer, segment size and source; None when none waits."""

    def is_registry(self, source: Endpoint) -> bool:
        """Whether datagrams from `source` need `split_registry`."""

    def is_opener(self, buffer: memoryview) -> bool:
        """Whether a receive is a peer's punch opener (counted, to be dropped)."""

    def split_registry(
        self, buffer: memoryview, segment_size: int, source: Endpoint
    ) -> FromRegistry:
        """Sort the datagrams of one receive from a registry or relay address."""

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        """Send datagrams to peer endpoints, each over its transport; the number refused."""

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        """Send a GSO train to one peer endpoint; the number refused."""

    def send_control(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> int:
        """Send control datagrams to registry or relay addresses; the number refused."""

    def use_registry(self, endpoint: Endpoint) -> None:
        """Relay through the registry replica at `endpoint` (when no relay is home)."""

    def use_relays(self, home: Endpoint | None, relays: set[Endpoint]) -> None:
        """Relay through `home` (None: the registry); take datagrams from all `relays`."""

    def status(self) -> dict[str, Any]:
        """What `pilotif status` shows of the transports (offloads)."""

    def close(self) -> None:
        """Close the sockets."""


class UdpBind(RelayFraming):
    """The Bind on UDP sockets (IPv4 and IPv6) on one port, batched; relayed peers are
    reached through relay datagrams over the same sockets."""

    def __init__(self, port: int | None, registries: tuple[Endpoint, ...] = ()) -> None:
        super().__init__(registries)
        self._sockets = UdpSockets(port)
        self._batch = UdpBatch(self._sockets)
        self.port = self._sockets.port
        self._udp = UdpTransport(self._batch)
        self._transports: dict[TransportKind, Transport] = {
            TransportKind.UDP4: self._udp,
            TransportKind.UDP6: self._udp,
            TransportKind.RELAY: RelayTransport(self, self._sockets.send),
        }

    def sockets(self) -> list[socket.socket]:
        """The open sockets, to watch for input."""
        return self._sockets.sockets()

    def status(self) -> dict[str, Any]:
        """Which offloads each socket has (`pilotif status`)."""
        return self._batch.status()

    def close(self) -> None:
        """Close the sockets."""
        self._sockets.close()

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        """Send datagrams, each over its transport; the number refused. Datagrams for one
        transport keep their order."""
        if all(is_udp(endpoint) for _, endpoint in datagrams):
            return self._udp.send(datagrams)
        by_transport: dict[Transport, list[tuple[BytesLike, PeerEndpoint]]] = {}
        for datagram, endpoint in datagrams:
            transport = self._transports[transport_of(endpoint)]
            by_transport.setdefault(transport, []).append((datagram, endpoint))
        return sum(transport.send(group) for transport, group in by_transport.items())

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        """Send a GSO train (datagrams of `size` bytes back to back, the last may be
        shorter) to one peer endpoint over its transport; the number refused."""
        return self._transports[transport_of(endpoint)].send_train(train, size, endpoint)

    def send_control(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> int:
        """Send control datagrams one by one; the number refused."""
        return sum(not self._sockets.send(datagram, to) for datagram, to in datagrams)

    def receive(self, sock: socket.socket) -> tuple[memoryview, int, Endpoint] | None:
        """One receive on `sock` (see `UdpBatch.receive`), or None when none waits."""
        return self._batch.receive(sock)
