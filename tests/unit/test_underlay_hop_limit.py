"""Punch openers leave with their own hop limit (issue 24): the TTL (IPv4) or hop limit
(IPv6) travels in the datagram's ancillary data, and the socket's default stays as it
is for everything else. On loopback, where the receiver sees the value."""

import socket
from collections.abc import Iterator

import pytest

from pilotif.net.udp import send_with_hop_limit

IP_RECVTTL = 12
"""Linux's IP_RECVTTL (Python's socket module does not name it)."""
OPENER_HOPS = 2
DEFAULT_TTL = 64


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    sock.settimeout(2)
    yield sock
    sock.close()


def _received_ttl(sock: socket.socket) -> tuple[bytes, int]:
    data, ancillary, _, _ = sock.recvmsg(100, 64)
    ((level, kind, value),) = ancillary
    assert (level, kind) == (socket.IPPROTO_IP, socket.IP_TTL)
    return data, int.from_bytes(value[:4], "little")


def test_an_opener_leaves_with_its_hop_limit_and_the_socket_keeps_its_default(
    receiver: socket.socket,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        to = receiver.getsockname()
        assert send_with_hop_limit([sender], b"open", to, OPENER_HOPS)
        assert _received_ttl(receiver) == (b"open", OPENER_HOPS)
        sender.sendto(b"data", to)
        assert _received_ttl(receiver) == (b"data", DEFAULT_TTL)


def test_an_ipv6_opener_leaves_with_its_hop_limit() -> None:
    try:
        receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        receiver.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with receiver, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        receiver.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        receiver.settimeout(2)
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with v4:
            assert send_with_hop_limit([v4, sender], b"open", receiver.getsockname()[:2], 3)
        _, ancillary, _, _ = receiver.recvmsg(100, 64)
        assert [(lvl, kind, int.from_bytes(v[:4], "little")) for lvl, kind, v in ancillary] == [
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, 3)
        ]


def test_no_socket_of_the_family_refuses_the_send() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
        assert not send_with_hop_limit([v4], b"open", ("::1", 9), OPENER_HOPS)
