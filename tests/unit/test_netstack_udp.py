"""UDP of the userspace stack (pilotif/netstack/udp.py): datagrams between two stacks
intact over IPv4 and IPv6; garbage, truncated packets, wrong checksums, fragments and
bad lengths dropped and counted, never raised; a datagram to a port nobody is bound to
answered with an ICMP port unreachable under a budget a second; every queue bounded. An
ICMP error about a datagram we sent reaches the socket that sent it, and only when the
destination it names says so, about a destination the socket sent to; mangled, stray or
forged ones are counted."""

import random
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotif.netstack.segment import build_segment
from pilotif.netstack.stack import EPHEMERAL_PORTS, LimitError
from pilotif.netstack.udp import (
    MAX_PORT,
    SendError,
    UdpConfig,
    UdpSocket,
    UdpStack,
    build_datagram,
    is_icmp,
    is_udp,
)
from pilotif.packet.checksum import internet_checksum
from pilotif.packet.icmp import (
    IcmpErrorKind,
    parse_icmp_error,
    port_unreachable_packet,
    too_big_packet,
)
from pilotif.packet.ip import (
    ICMP_DESTINATION_UNREACHABLE,
    ICMP_PORT_UNREACHABLE,
    ICMPV6_DESTINATION_UNREACHABLE,
    ICMPV6_PORT_UNREACHABLE,
    IPV4_FLAGS_FRAGMENT_OFFSET,
    IPV4_MIN_HEADER_BYTES,
    IPV6_HEADER_BYTES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    TCP_SYN,
    UDP_CHECKSUM_OFFSET,
    UDP_HEADER_BYTES,
    UDP_LENGTH_OFFSET,
    packet_addresses,
)

A_V4 = IPv4Address("100.64.0.1")
B_V4 = IPv4Address("100.64.0.2")
A_V6 = IPv6Address("fd7a:115c:a1e0::1")
B_V6 = IPv6Address("fd7a:115c:a1e0::2")
NOW = 100.0
PORT = 5353


def _pair(config: UdpConfig | None = None) -> tuple[UdpStack, UdpStack]:
    return UdpStack([A_V4, A_V6], config), UdpStack([B_V4, B_V6], config)


def _datagram_to_b(data: bytes = b"hello", port: int = PORT, v6: bool = False) -> bytes:
    source, destination = (A_V6, B_V6) if v6 else (A_V4, B_V4)
    return build_datagram(source.packed, destination.packed, (40000, port), data)


@pytest.mark.parametrize("v6", [False, True])
def test_a_datagram_crosses_intact_and_the_answer_comes_back(v6: bool) -> None:
    a, b = _pair()
    server = b.bind(PORT)
    client = a.bind()
    assert client.port in EPHEMERAL_PORTS
    remote = B_V6 if v6 else B_V4
    data = bytes(range(256)) * 4
    assert client.send(data, remote, PORT)
    for packet in a.take_output():
        assert is_udp(packet)
        b.receive(packet, NOW)
    assert b.take_readable() == [server]
    got = server.take()
    assert got is not None and got.data == data
    assert got.source == (A_V6 if v6 else A_V4) and got.source_port == client.port
    assert got.destination == remote
    server.send(b"back", got.source, got.source_port)
    for packet in b.take_output():
        a.receive(packet, NOW)
    answer = client.take()
    assert answer is not None and answer.data == b"back" and answer.source == remote
    assert server.take() is None and not a.counters and not b.counters


def test_garbage_and_every_truncation_are_dropped_and_counted() -> None:
    _, b = _pair()
    server = b.bind(PORT)
    rng = random.Random(25)
    for _ in range(300):
        b.receive(rng.randbytes(rng.randrange(0, 90)), NOW)
    good = _datagram_to_b(b"payload")
    for cut in range(len(good)):
        b.receive(good[:cut], NOW)
    assert server.pending == 0
    assert b.counters["truncated"] > 0
    b.receive(good, NOW)
    taken = server.take()
    assert taken is not None and taken.data == b"payload"


def test_a_udp_length_beyond_the_packet_is_dropped() -> None:
    _, b = _pair()
    server = b.bind(PORT)
    packet = bytearray(_datagram_to_b(b"abc"))
    at = IPV4_MIN_HEADER_BYTES + UDP_LENGTH_OFFSET
    packet[at : at + 2] = (UDP_HEADER_BYTES + 4).to_bytes(2)
    b.receive(bytes(packet), NOW, authenticated=True)
    packet[at : at + 2] = (UDP_HEADER_BYTES - 1).to_bytes(2)
    b.receive(bytes(packet), NOW, authenticated=True)
    assert b.counters["bad_length"] == 2 and server.pending == 0


def test_padding_after_the_udp_length_is_not_data() -> None:
    _, b = _pair()
    server = b.bind(PORT)
    packet = bytearray(_datagram_to_b(b"abcd"))
    at = IPV4_MIN_HEADER_BYTES + UDP_LENGTH_OFFSET
    packet[at : at + 2] = (UDP_HEADER_BYTES + 2).to_bytes(2)
    b.receive(bytes(packet), NOW, authenticated=True)
    taken = server.take()
    assert taken is not None and taken.data == b"ab"


@pytest.mark.parametrize("v6", [False, True])
def test_a_wrong_checksum_is_dropped_unless_wireguard_vouched_for_it(v6: bool) -> None:
    _, b = _pair()
    server = b.bind(PORT)
    packet = bytearray(_datagram_to_b(b"data", v6=v6))
    packet[-1] ^= 0x55
    b.receive(bytes(packet), NOW)
    assert b.counters["bad_checksum"] == 1 and server.pending == 0
    b.receive(bytes(packet), NOW, authenticated=True)
    assert server.pending == 1


def test_a_zero_checksum_means_none_for_ipv4_only() -> None:
    _, b = _pair()
    server = b.bind(PORT)
    for v6 in (False, True):
        packet = bytearray(_datagram_to_b(b"data", v6=v6))
        at = (IPV6_HEADER_BYTES if v6 else IPV4_MIN_HEADER_BYTES) + UDP_CHECKSUM_OFFSET
        packet[at : at + 2] = b"\0\0"
        b.receive(bytes(packet), NOW)
    taken = server.take()
    assert taken is not None and taken.source == A_V4
    assert server.take() is None and b.counters["bad_checksum"] == 1


def test_fragments_other_addresses_and_port_zero_are_dropped() -> None:
    _, b = _pair()
    server = b.bind(PORT)
    fragment = bytearray(_datagram_to_b())
    fragment[IPV4_FLAGS_FRAGMENT_OFFSET] |= 0x20  # more fragments
    fragment[10:12] = b"\0\0"
    fragment[10:12] = internet_checksum(fragment[:IPV4_MIN_HEADER_BYTES]).to_bytes(2)
    b.receive(bytes(fragment), NOW)
    elsewhere = build_datagram(A_V4.packed, A_V4.packed, (40000, PORT), b"x")
    b.receive(elsewhere, NOW)
    from_zero = build_datagram(A_V4.packed, B_V4.packed, (0, PORT), b"x")
    b.receive(from_zero, NOW)
    assert (b.counters["fragment"], b.counters["not_local"], b.counters["bad_port"]) == (1, 1, 1)
    assert server.pending == 0


@pytest.mark.parametrize("v6", [False, True])
def test_an_unbound_port_answers_port_unreachable_quoting_the_datagram(v6: bool) -> None:
    _, b = _pair()
    sent = _datagram_to_b(b"anyone?", port=9999, v6=v6)
    b.receive(sent, NOW)
    (answer,) = b.take_output()
    addresses = packet_addresses(answer)
    assert addresses is not None
    source, destination, _ = addresses
    if v6:
        assert (source, destination) == (B_V6.packed, A_V6.packed)
        assert answer[6] == PROTO_ICMPV6
        kind = (answer[IPV6_HEADER_BYTES], answer[IPV6_HEADER_BYTES + 1])
        assert kind == (ICMPV6_DESTINATION_UNREACHABLE, ICMPV6_PORT_UNREACHABLE)
    else:
        assert (source, destination) == (B_V4.packed, A_V4.packed)
        assert answer[9] == PROTO_ICMP
        kind = (answer[IPV4_MIN_HEADER_BYTES], answer[IPV4_MIN_HEADER_BYTES + 1])
        assert kind == (ICMP_DESTINATION_UNREACHABLE, ICMP_PORT_UNREACHABLE)
        assert internet_checksum(answer[IPV4_MIN_HEADER_BYTES:]) == 0
    assert sent in answer
    assert b.counters["no_socket"] == 1


def test_port_unreachable_answers_are_rate_limited_per_second() -> None:
    _, b = _pair(UdpConfig(unreachable_per_s=3))
    for _ in range(10):
        b.receive(_datagram_to_b(port=9999), NOW)
    assert len(b.take_output()) == 3
    assert b.counters["no_socket_unanswered"] == 7
    b.receive(_datagram_to_b(port=9999), NOW + 1)
    assert len(b.take_output()) == 1


def test_a_closed_socket_answers_port_unreachable_again() -> None:
    _, b = _pair()
    server = b.bind(PORT)
    b.receive(_datagram_to_b(), NOW)
    server.close()
    assert server.take() is None and b.queued_bytes == 0
    b.receive(_datagram_to_b(), NOW)
    assert b.counters["no_socket"] == 1
    assert b.bind(PORT).port == PORT  # the port is free again


def test_a_socket_queue_is_bounded_in_datagrams_and_bytes() -> None:
    _, b = _pair(UdpConfig(max_queued_datagrams=4, max_queued_bytes=1000))
    server = b.bind(PORT)
    for _ in range(6):
        b.receive(_datagram_to_b(b"x"), NOW)
    assert server.pending == 4 and b.counters["socket_queue_full"] == 2
    other = b.bind(PORT + 1)
    for _ in range(3):
        b.receive(_datagram_to_b(bytes(400), port=PORT + 1), NOW)
    assert other.pending == 2 and other.queued_bytes == 800
    assert b.counters["socket_queue_full"] == 3
    while server.take() is not None:
        pass
    b.receive(_datagram_to_b(b"x"), NOW)  # taking makes room again
    assert server.pending == 1


def test_the_node_bounds_what_all_sockets_hold_together() -> None:
    _, b = _pair(UdpConfig(max_node_queued_bytes=1000))
    sockets = [b.bind(PORT + i) for i in range(3)]
    for i in range(3):
        b.receive(_datagram_to_b(bytes(400), port=PORT + i), NOW)
    assert [s.pending for s in sockets] == [1, 1, 0]
    assert b.counters["node_queue_full"] == 1 and b.queued_bytes == 800


def test_what_waits_to_be_sent_is_bounded() -> None:
    a, _ = _pair(UdpConfig(max_output_datagrams=5))
    client = a.bind()
    sent = [client.send(b"x", B_V4, PORT) for _ in range(7)]
    assert sent == [True] * 5 + [False] * 2
    assert a.counters["output_full"] == 2
    assert len(a.take_output()) == 5 and client.send(b"x", B_V4, PORT)


def test_an_oversized_datagram_or_bad_port_cannot_be_sent() -> None:
    a, _ = _pair()
    client = a.bind()
    fits = a.config.max_payload_bytes(ipv6=False)
    assert client.send(bytes(fits), B_V4, PORT)
    with pytest.raises(ValueError, match="MTU"):
        client.send(bytes(fits + 1), B_V4, PORT)
    with pytest.raises(ValueError, match="MTU"):
        client.send(bytes(fits), B_V6, PORT)  # IPv6's header is 20 bytes longer
    with pytest.raises(ValueError, match="out of range"):
        client.send(b"x", B_V4, 0)
    client.close()
    with pytest.raises(ValueError, match="closed"):
        client.send(b"x", B_V4, PORT)


def test_binding_a_taken_port_or_past_the_cap_is_refused() -> None:
    a, _ = _pair(UdpConfig(max_sockets=2))
    a.bind(PORT)
    with pytest.raises(ValueError, match="already bound"):
        a.bind(PORT)
    with pytest.raises(ValueError, match="out of range"):
        a.bind(70000)
    a.bind()
    with pytest.raises(LimitError):
        a.bind()


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=0, max_size=80),
    st.sampled_from([0, 4, 6, 9, 20, 24, 26, 28]),
    st.booleans(),
)
def test_any_mangling_of_a_datagram_raises_nothing(noise: bytes, at: int, v6: bool) -> None:
    _, b = _pair()
    server = b.bind(PORT)
    packet = bytearray(_datagram_to_b(b"0123456789", v6=v6))
    packet[at : at + len(noise)] = noise
    b.receive(bytes(packet), NOW)
    b.receive(bytes(packet), NOW, authenticated=True)
    assert server.pending <= 2 and b.queued_bytes <= 2 * len(packet)


def _datagram_from(port: int, *, to: int) -> bytes:
    return build_datagram(A_V4.packed, B_V4.packed, (port, to), b"never sent")


def _refused(v6: bool = False) -> tuple[UdpStack, UdpSocket, bytes]:
    """A's socket sent a datagram to a port of B nobody is bound to; B's answer."""
    a, b = _pair()
    client = a.bind()
    assert client.send(b"anyone?", B_V6 if v6 else B_V4, PORT)
    (sent,) = a.take_output()
    b.receive(sent, NOW)
    (answer,) = b.take_output()
    return a, client, answer


@pytest.mark.parametrize("v6", [False, True])
def test_a_port_unreachable_reaches_the_socket_that_sent_the_datagram(v6: bool) -> None:
    a, client, answer = _refused(v6)
    assert is_icmp(answer) and not is_udp(answer)
    assert a.receive_icmp(answer)
    assert a.take_readable() == [client]
    error = client.take_error()
    assert error == SendError(IcmpErrorKind.PORT_UNREACHABLE, B_V6 if v6 else B_V4, PORT, 0)
    assert client.take_error() is None  # told once
    assert a.counters == {"icmp_port_unreachable": 1}


@pytest.mark.parametrize("v6", [False, True])
def test_a_too_big_about_a_datagram_says_how_big_the_path_is(v6: bool) -> None:
    a, _ = _pair()
    client = a.bind()
    client.send(b"x" * 1300, B_V6 if v6 else B_V4, PORT)
    (sent,) = a.take_output()
    told = too_big_packet(sent, 1280)
    assert told is not None and a.receive_icmp(told)
    error = client.take_error()
    assert error is not None and error.kind is IcmpErrorKind.TOO_BIG and error.mtu == 1280


def test_an_icmp_error_about_tcp_is_left_to_the_tcp_stack() -> None:
    a, _ = _pair()
    segment = build_segment(A_V4.packed, B_V4.packed, (40000, 80), 1, 0, TCP_SYN, 1000)
    told = port_unreachable_packet(segment)
    assert told is not None and not a.receive_icmp(told)
    assert not a.counters


def test_forged_stray_truncated_and_bad_icmp_errors_are_counted_and_change_nothing() -> None:
    a, client, answer = _refused()
    forged = bytearray(answer)
    forged[12:16] = IPv4Address("100.64.0.9").packed  # another peer speaks for B
    other_port = bytearray(answer)
    quoted_source_port = IPV4_MIN_HEADER_BYTES + 8 + IPV4_MIN_HEADER_BYTES
    other_port[quoted_source_port] ^= 0xFF  # a port nobody here is bound to
    not_ours = bytearray(answer)
    not_ours[IPV4_MIN_HEADER_BYTES + 8 + 12 : IPV4_MIN_HEADER_BYTES + 8 + 16] = B_V4.packed
    bad_sum = bytearray(answer)
    bad_sum[-1] ^= 0xFF
    never_sent = port_unreachable_packet(_datagram_from(client.port, to=PORT + 1))
    assert never_sent is not None  # B says so, about a port A never sent to
    for packet, reason in (
        (forged, "icmp_forged"),
        (other_port, "icmp_no_socket"),
        (not_ours, "icmp_not_ours"),
        (never_sent, "icmp_not_sent"),
    ):
        assert a.receive_icmp(bytes(packet), authenticated=True)
        assert a.counters[reason] == 1, reason
    assert a.receive_icmp(bytes(bad_sum))  # no WireGuard vouching for it: summed
    assert a.counters["icmp_bad_checksum"] == 1
    quoted_ports_end = quoted_source_port + 4
    for cut in range(quoted_ports_end):
        assert not a.receive_icmp(answer[:cut])  # too short to say whose: not taken
    assert client.take_error() is None and not a.take_readable()


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=0, max_size=60),
    st.integers(0, 90),
    st.booleans(),
    st.booleans(),
)
def test_any_mangling_of_an_icmp_error_raises_nothing(
    noise: bytes, at: int, v6: bool, authenticated: bool
) -> None:
    a, client, answer = _refused(v6)
    packet = bytearray(answer)
    packet[at : at + len(noise)] = noise
    a.receive_icmp(bytes(packet), authenticated=authenticated)
    a.receive(bytes(packet), NOW, authenticated=authenticated)
    error = client.take_error()
    assert error is None or error.address == (B_V6 if v6 else B_V4)


def test_an_icmp_error_quoting_a_header_shorter_than_ipv4s_least_is_not_read() -> None:
    """The quoted header's length says where its ports are: under 20 bytes it would read
    them from the quoted addresses."""
    a, client, answer = _refused()
    assert parse_icmp_error(answer) is not None
    for ihl_words in range(5):
        short = bytearray(answer)
        short[IPV4_MIN_HEADER_BYTES + 8] = 0x40 | ihl_words
        assert parse_icmp_error(bytes(short)) is None
        assert not a.receive_icmp(bytes(short), authenticated=True)
    assert client.take_error() is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_any_bytes_parse_as_an_icmp_error_or_none(data: bytes) -> None:
    error = parse_icmp_error(data)
    if error is not None:
        assert len(error.source) == len(error.destination) == len(error.sender)
        assert 0 <= error.source_port <= MAX_PORT and 0 <= error.destination_port <= MAX_PORT
