"""Reading addresses and lengths out of raw IPv4 and IPv6 headers."""

import struct
from ipaddress import ip_address

import pytest

from pilotif.packet.ip import is_echo_reply, packet_addresses

V4_SOURCE = ip_address("100.64.0.1").packed
V4_DESTINATION = ip_address("100.64.0.2").packed
V6_SOURCE = ip_address("fd00::1").packed
V6_DESTINATION = ip_address("fd00::2").packed


def _ipv4(
    payload: bytes, ihl_words: int = 5, total_length: int | None = None, protocol: int = 17
) -> bytes:
    options = bytes(4 * (ihl_words - 5)) if ihl_words > 5 else b""
    header_size = 20 + len(options)
    length = header_size + len(payload) if total_length is None else total_length
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl_words,
        0,
        length,
        0,
        0,
        64,
        protocol,
        0,
        V4_SOURCE,
        V4_DESTINATION,
    )
    return header + options + payload


def _ipv6(payload: bytes, payload_length: int | None = None, next_header: int = 17) -> bytes:
    length = len(payload) if payload_length is None else payload_length
    header = struct.pack(
        "!IHBB16s16s", 0x60000000, length, next_header, 64, V6_SOURCE, V6_DESTINATION
    )
    return header + payload


def test_ipv4_addresses_and_length() -> None:
    packet = _ipv4(b"hello")
    assert packet_addresses(packet) == (V4_SOURCE, V4_DESTINATION, 25)


def test_ipv4_padding_is_not_counted() -> None:
    packet = _ipv4(b"hello") + bytes(11)
    assert packet_addresses(bytearray(packet)) == (V4_SOURCE, V4_DESTINATION, 25)


def test_ipv4_with_options() -> None:
    assert packet_addresses(_ipv4(b"x", ihl_words=6)) == (V4_SOURCE, V4_DESTINATION, 25)


def test_ipv6_addresses_and_length() -> None:
    packet = _ipv6(b"hello") + bytes(3)
    assert packet_addresses(memoryview(packet)) == (V6_SOURCE, V6_DESTINATION, 45)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(_ipv4(b"hello")[:19], id="v4-short-header"),
        pytest.param(_ipv4(b"hello", ihl_words=4), id="v4-ihl-below-5"),
        pytest.param(_ipv4(b"hello", total_length=26), id="v4-total-length-past-end"),
        pytest.param(_ipv4(b"hello", total_length=19), id="v4-total-length-inside-header"),
        pytest.param(_ipv4(b"", ihl_words=15, total_length=40), id="v4-ihl-past-total-length"),
        pytest.param(_ipv6(b"hello")[:39], id="v6-short-header"),
        pytest.param(_ipv6(b"hello", payload_length=6), id="v6-payload-past-end"),
        pytest.param(b"\x50" + bytes(40), id="version-5"),
        pytest.param(bytes(64), id="version-0"),
    ],
)
def test_malformed_packets_give_none(packet: bytes) -> None:
    assert packet_addresses(packet) is None


ICMP, ICMPV6 = 1, 58
ECHO = bytes(6)
"""An echo's identifier, sequence and checksum (zeros: not read)."""


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (_ipv4(bytes([0, 0]) + ECHO, protocol=ICMP), True),
        (_ipv4(bytes([0, 0]) + ECHO, ihl_words=6, protocol=ICMP), True),
        (_ipv6(bytes([129, 0]) + ECHO, next_header=ICMPV6), True),
        (_ipv4(bytes([8, 0]) + ECHO, protocol=ICMP), False),
        (_ipv6(bytes([128, 0]) + ECHO, next_header=ICMPV6), False),
        (_ipv4(bytes([0, 0]) + ECHO), False),
        (_ipv4(b"", protocol=ICMP), False),
        (_ipv6(b"", next_header=ICMPV6), False),
        (b"\x45", False),
        (b"", False),
    ],
)
def test_an_echo_reply_is_recognised_and_nothing_else_is(packet: bytes, expected: bool) -> None:
    assert is_echo_reply(packet) is expected
