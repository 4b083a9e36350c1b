"""The Bind: the network side of a daemon (wireguard-go's conn.Bind, Tailscale's magicsock).

`Bind` is the interface the data path and the daemon use: send datagrams (or a GSO train)
to any peer endpoint, whatever its transport (net/transport.py); send control datagrams to
the registry and relays; receive from the sockets it watches and sort what came from a
registry or relay address (net/relay_frame.py). `UdpBind` is the one on UDP sockets; the
tests have a fake.
"""

import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from pilotif.net.hostport import format_endpoint
from pilotif.net.relay_frame import FromRegistry, RelayFraming
from pilotif.net.streams import NodeStreams, StreamOptions
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


def path_transport(bind: "Bind", endpoint: PeerEndpoint) -> str:
    """How datagrams reach `endpoint` now: `udp4`, `udp6`, or the relay's way
    (`relay`, `tcp relay`, `tcp relay via proxy`)."""
    kind = transport_of(endpoint)
    return bind.relay_text() if kind is TransportKind.RELAY else str(kind)


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

    def transport(self) -> dict[str, Any]:
        """What carries control datagrams and relayed peers: the mode, `udp`, `tcp` or
        `tcp via proxy`, the proxy, the streams (`pilotif status`)."""

    def relay_text(self) -> str:
        """How relayed peers are reached now (`relay`, `tcp relay`, ...)."""

    def close(self) -> None:
        """Close the sockets."""


class UdpBind(RelayFraming):
    """The Bind on UDP sockets (IPv4 and IPv6) on one port, batched; relayed peers are
    reached through relay datagrams over the same sockets, or, with `streams` (a node's),
    over streams to the registry and relays when those carry (net/streams.py)."""

    def __init__(
        self,
        port: int | None,
        registries: tuple[Endpoint, ...] = (),
        streams: StreamOptions | None = None,
    ) -> None:
        super().__init__(registries)
        self._sockets = UdpSockets(port)
        self._batch = UdpBatch(self._sockets)
        self.port = self._sockets.port
        self.streams = NodeStreams(streams, self.counters) if streams is not None else None
        self._udp = UdpTransport(self._batch)
        self._transports: dict[TransportKind, Transport] = {
            TransportKind.UDP4: self._udp,
            TransportKind.UDP6: self._udp,
            TransportKind.RELAY: RelayTransport(self, self._send_relayed),
        }

    def sockets(self) -> list[socket.socket]:
        """The open sockets (and the streams' inbox), to watch for input."""
        extra = self.streams.sockets() if self.streams is not None else []
        return self._sockets.sockets() + extra

    def status(self) -> dict[str, Any]:
        """Which offloads each socket has (`pilotif status`)."""
        return self._batch.status()

    def transport(self) -> dict[str, Any]:
        """What carries control datagrams and relayed peers (`pilotif status`)."""
        if self.streams is None:
            return {"mode": "udp", "carrier": "udp", "proxy": None, "streams": {}}
        return self.streams.status()

    def relay_text(self) -> str:
        """How relayed peers are reached now: `relay` (over UDP), `tcp relay`, or
        `tcp relay via proxy`."""
        if self.streams is None or not self.streams.choice.on_stream:
            return "relay"
        return "tcp relay via proxy" if self.streams.proxy is not None else "tcp relay"

    def close(self) -> None:
        """Close the sockets and the streams."""
        self._sockets.close()
        if self.streams is not None:
            self.streams.close()

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
        return sum(not self._send_control(datagram, to) for datagram, to in datagrams)

    def _send_control(self, datagram: bytes, to: Endpoint) -> bool:
        """One datagram to a registry or relay address: over UDP, or over the stream to
        it when the streams carry (and then, now and again, a probe over UDP)."""
        streams = self.streams
        if streams is None:
            return self._sockets.send(datagram, to)
        now = time.monotonic()
        if not streams.carries(now):
            streams.sent_udp(now)
            return self._sockets.send(datagram, to)
        if self.registry is not None and streams.choice.probe_due(now):
            self._sockets.send(streams.probe, self.registry)
        return streams.send(datagram, to)

    def _send_relayed(self, datagram: bytes, to: Endpoint) -> bool:
        """A relay message to the home relay (or the registry): over the stream to it
        when the streams carry, else over UDP (its answers are not awaited: a flow one
        way is no sign that UDP fails)."""
        streams = self.streams
        if streams is not None and streams.choice.on_stream:
            return streams.send(datagram, to)
        return self._sockets.send(datagram, to)

    def receive(self, sock: socket.socket) -> tuple[memoryview, int, Endpoint] | None:
        """One receive on `sock` (see `UdpBatch.receive`; from the streams' inbox, as if
        its registry or relay had sent it), or None when none waits."""
        streams = self.streams
        if streams is None:
            return self._batch.receive(sock)
        if streams.owns(sock):
            return streams.receive()
        received = self._batch.receive(sock)
        if received is not None and self.is_registry(received[2]):
            streams.heard_udp(time.monotonic())
        return received
