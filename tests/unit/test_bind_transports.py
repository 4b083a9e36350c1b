"""The Bind's transports: an endpoint knows its transport, and the UDP Bind sends a mixed
batch over each (on loopback); the fake Bind is a Bind."""

import socket
from collections.abc import Iterator

import pytest

from pilotif.net.bind import Bind, UdpBind
from pilotif.net.relay_frame import unpack_relay
from pilotif.net.transport import TransportKind, transport_of
from pilotif.wg.events import PeerEndpoint, RelayEndpoint
from tests.unit.fake_bind import FakeBind

PEER_KEY = bytes(range(32))


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two loopback sockets: a peer reached directly, and the registry that relays."""
    pair = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        pair.append(sock)
    yield pair[0], pair[1]
    for sock in pair:
        sock.close()


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [
        (("198.18.0.2", 51820), TransportKind.UDP4),
        (("fd00::2", 51820), TransportKind.UDP6),
        (RelayEndpoint(PEER_KEY), TransportKind.RELAY),
    ],
)
def test_an_endpoint_knows_its_transport(endpoint: PeerEndpoint, kind: TransportKind) -> None:
    assert transport_of(endpoint) is kind


def test_a_mixed_batch_goes_over_each_transport_in_order(
    listeners: tuple[socket.socket, socket.socket],
) -> None:
    peer, registry = listeners
    bind = UdpBind(None, (registry.getsockname(),))
    relayed = RelayEndpoint(PEER_KEY)
    batch: list[tuple[bytes, PeerEndpoint]] = [
        (b"\x04direct-1", peer.getsockname()),
        (b"\x04relayed-1", relayed),
        (b"\x04direct-2", peer.getsockname()),
        (b"\x04relayed-2", relayed),
    ]
    try:
        assert bind.send(batch) == 0
        assert [peer.recv(2048) for _ in range(2)] == [b"\x04direct-1", b"\x04direct-2"]
        arrived = [unpack_relay(registry.recv(2048)) for _ in range(2)]
        assert arrived == [(PEER_KEY, b"\x04relayed-1"), (PEER_KEY, b"\x04relayed-2")]
        assert bind.counters["relay_tx_bytes"] == len(b"\x04relayed-1") + len(b"\x04relayed-2")
    finally:
        bind.close()


def test_a_relayed_datagram_with_no_relay_is_refused() -> None:
    bind = UdpBind(None)
    try:
        assert bind.send([(b"\x04data", RelayEndpoint(PEER_KEY))]) == 1
    finally:
        bind.close()


def test_the_fake_bind_keeps_what_each_transport_would_carry() -> None:
    fake: Bind = FakeBind()
    fake.send([(b"a", ("198.18.0.2", 1)), (b"b", RelayEndpoint(PEER_KEY))])
    assert isinstance(fake, FakeBind)
    assert [kind for _, _, kind in fake.sent] == [TransportKind.UDP4, TransportKind.RELAY]
