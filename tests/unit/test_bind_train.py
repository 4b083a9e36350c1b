"""UdpBind.send_train on loopback: a GSO train reaches a direct peer as its datagrams, and a
relayed peer as one relay message per datagram, in order, none lost."""

import os
import socket
from collections.abc import Iterator

import pytest

from pilotif.control.wire import unpack_relay
from pilotif.net.bind import UdpBind
from pilotif.wg.events import RelayEndpoint

SIZE = 1452
PEER_KEY = bytes(range(32))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket standing in for the peer, or for the registry that relays."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def train_of(sizes: list[int]) -> memoryview:
    return memoryview(b"".join(os.urandom(size) for size in sizes))


def datagrams_of(train: memoryview, sizes: list[int]) -> list[bytes]:
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    return [bytes(train[start : start + size]) for start, size in zip(starts, sizes, strict=True)]


def received(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(1 << 16) for _ in range(count)]


def test_a_train_reaches_a_direct_peer_as_its_datagrams(listener: socket.socket) -> None:
    bind = UdpBind(None)
    sizes = [SIZE] * 5 + [200]
    train = train_of(sizes)
    try:
        assert bind.send_train(train, SIZE, listener.getsockname()) == 0
        assert received(listener, len(sizes)) == datagrams_of(train, sizes)
    finally:
        bind.close()


def test_a_train_reaches_a_relayed_peer_one_relay_message_a_datagram(
    listener: socket.socket,
) -> None:
    bind = UdpBind(None, (listener.getsockname(),))
    sizes = [SIZE] * 5 + [200]
    train = train_of(sizes)
    try:
        assert bind.send_train(train, SIZE, RelayEndpoint(PEER_KEY)) == 0
        messages = [unpack_relay(message) for message in received(listener, len(sizes))]
        assert messages == [(PEER_KEY, datagram) for datagram in datagrams_of(train, sizes)]
        assert bind.counters["relay_tx_bytes"] == len(train)
    finally:
        bind.close()
