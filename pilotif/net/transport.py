"""The Bind's transports: an endpoint knows its transport (`transport_of`), and each
transport carries datagrams to the endpoints of its kind behind one small interface
(`Transport`, wireguard-go's conn.Bind for one kind of endpoint).

Today: UDP over IPv4 and IPv6 (one batched socket pair, GSO trains), and the relay
datagram (each datagram wrapped for its peer and sent to the home relay, or the registry,
over UDP). Next (issue 24): a stream to a relay over TCP/TLS, one more kind and one more
transport; the Bind's callers do not change.
"""

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

from pilotif.net.relay_frame import RelayFraming
from pilotif.net.udp_batch import UdpBatch
from pilotif.packet.ip import BytesLike
from pilotif.wg.events import Endpoint, PeerEndpoint, RelayEndpoint
from pilotif.wg.messages import split_coalesced


class TransportKind(StrEnum):
    """How a datagram reaches an endpoint."""

    UDP4 = "udp4"
    UDP6 = "udp6"
    RELAY = "relay"


def is_udp(endpoint: PeerEndpoint) -> bool:
    """Whether `endpoint` is a UDP address (an `(ip, port)` tuple), not a relayed peer."""
    return isinstance(endpoint, tuple)


def transport_of(endpoint: PeerEndpoint) -> TransportKind:
    """The transport that carries datagrams to `endpoint`."""
    if isinstance(endpoint, RelayEndpoint):
        return TransportKind.RELAY
    return TransportKind.UDP6 if ":" in endpoint[0] else TransportKind.UDP4


class Transport(Protocol):
    """Carries datagrams to the endpoints of one kind; each send says how many it refused."""

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        """Send datagrams in order."""

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        """Send a GSO train: datagrams of `size` bytes back to back (the last may be
        shorter), all to `endpoint`."""


class UdpTransport:
    """UDP over IPv4 and IPv6, batched (sendmmsg, GSO)."""

    def __init__(self, batch: UdpBatch) -> None:
        self._batch = batch

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        """Send datagrams to UDP endpoints (the Bind gives this transport no other)."""
        return self._batch.send(datagrams)  # type: ignore[arg-type]

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        """Send a train as one GSO send where the socket can."""
        assert is_udp(endpoint)
        return self._batch.send_buffer(train, size, endpoint)  # type: ignore[arg-type]


class RelayTransport:
    """Datagrams for relayed peers: each wrapped by `framing` for its peer and sent to the
    home relay (or the registry) with `carrier`, one by one."""

    def __init__(self, framing: RelayFraming, carrier: Callable[[bytes, Endpoint], bool]) -> None:
        self._framing = framing
        self._carrier = carrier

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        """Wrap and send each datagram."""
        refused = 0
        for datagram, endpoint in datagrams:
            assert isinstance(endpoint, RelayEndpoint)
            wrapped = self._framing.wrap(datagram, endpoint)
            refused += wrapped is None or not self._carrier(*wrapped)
        return refused

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        """One relay message per datagram of the train."""
        return self.send([(datagram, endpoint) for datagram in split_coalesced(train, size)])
