"""ICMP messages the overlay makes: the echo request a `pilotif ping` sends, the whole
IPv4 packet carrying one that the node injects to check that a direct path still
answers, the "fragmentation needed" / "packet too big" that tells a local sender
its packet does not fit the path to a peer, and the "port unreachable" a userspace node
answers a datagram to a port nobody listens on with; and reading such an error about one
of our TCP segments or UDP datagrams (`parse_icmp_error`)."""

import enum
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from pilotif.packet.checksum import internet_checksum
from pilotif.packet.ip import (
    ICMP_DESTINATION_UNREACHABLE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_FRAGMENTATION_NEEDED,
    ICMP_PORT_UNREACHABLE,
    ICMPV6_DESTINATION_UNREACHABLE,
    ICMPV6_PACKET_TOO_BIG,
    ICMPV6_PORT_UNREACHABLE,
    IPV4_ADDRESS_BYTES,
    IPV4_DESTINATION_OFFSET,
    IPV4_IHL_MASK,
    IPV4_MIN_HEADER_BYTES,
    IPV4_MIN_IHL_WORDS,
    IPV4_PLAIN_FIRST_BYTE,
    IPV4_PROTOCOL_OFFSET,
    IPV4_SOURCE_OFFSET,
    IPV4_VERSION,
    IPV4_WORD_BYTES,
    IPV6_DESTINATION_OFFSET,
    IPV6_HEADER_BYTES,
    IPV6_MIN_MTU,
    IPV6_NEXT_HEADER_OFFSET,
    IPV6_SOURCE_OFFSET,
    IPV6_VERSION,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    BytesLike,
    packet_addresses,
)

ECHO_REQUEST: Final = ICMP_ECHO_REQUEST
ECHO_REPLY: Final = ICMP_ECHO_REPLY
ECHO_HEADER: Final = struct.Struct("!BBHHH")
_PAYLOAD: Final = b"pilotif-ping-0123456789abcdef"
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_TTL = 64
_PATH_CHECK_IDENT = 0x7069
_PORTS: Final = struct.Struct("!HH")
_ICMP_HEADER: Final = struct.Struct("!BBHHH")
"""Type, code, checksum, then two 16-bit fields (unused and next-hop MTU for IPv4)."""
_ICMPV6_ERROR_HEADER: Final = struct.Struct("!BBHI")
"""Type, code, checksum, then a 32-bit field (the MTU of a "packet too big")."""
_IPV6_HEADER: Final = struct.Struct("!IHBB16s16s")
_IPV4_QUOTED_BYTES: Final = 548
"""How much of the packet an IPv4 "fragmentation needed" quotes: the whole message
within 576 bytes (RFC 1812 4.3.2.3), the IP header and 8 bytes at least."""
_IPV6_QUOTED_BYTES: Final = IPV6_MIN_MTU - IPV6_HEADER_BYTES - _ICMPV6_ERROR_HEADER.size
"""An ICMPv6 error quotes as much as fits in the least MTU (RFC 4443 2.4)."""
_IPV6_FIRST_WORD: Final = IPV6_VERSION << 28
"""Version 6, traffic class and flow label 0."""
_IPV6_PSEUDO_TAIL: Final = struct.Struct("!I3xB")
"""The ICMPv6 pseudo-header after the addresses: upper-layer length, next header."""


def echo_message(ident: int, sequence: int) -> bytes:
    """An ICMP echo request (header and payload) with its checksum."""
    header = ECHO_HEADER.pack(ECHO_REQUEST, 0, 0, ident, sequence)
    checksum = internet_checksum(header + _PAYLOAD)
    return ECHO_HEADER.pack(ECHO_REQUEST, 0, checksum, ident, sequence) + _PAYLOAD


def echo_request_packet(
    source: IPv4Address, destination: IPv4Address, sequence: int, *, ident: int = _PATH_CHECK_IDENT
) -> bytes:
    """A whole IPv4 packet carrying an ICMP echo request, ready for the overlay device
    (`ident`: the path checks' unless given)."""
    message = echo_message(ident, sequence & 0xFFFF)
    fields = [
        IPV4_PLAIN_FIRST_BYTE,
        0,
        IPV4_MIN_HEADER_BYTES + len(message),
        0,
        0,
        _TTL,
        PROTO_ICMP,
        0,
    ]
    header = _IPV4_HEADER.pack(*fields, source.packed, destination.packed)
    fields[7] = internet_checksum(header)
    return _IPV4_HEADER.pack(*fields, source.packed, destination.packed) + message


def too_big_packet(packet: BytesLike, mtu: int) -> bytes | None:
    """The ICMP error that tells the sender of `packet` that packets to its destination
    must be at most `mtu` bytes (IPv4: "fragmentation needed", ICMPv6: "packet too big",
    never below IPv6's least MTU), sent as if by that destination and quoting the
    packet's start; None when `packet` is not a well-formed IP packet."""
    return _error_packet(
        packet,
        (ICMP_DESTINATION_UNREACHABLE, ICMP_FRAGMENTATION_NEEDED, mtu),
        (ICMPV6_PACKET_TOO_BIG, 0, max(mtu, IPV6_MIN_MTU)),
    )


def port_unreachable_packet(packet: BytesLike) -> bytes | None:
    """The ICMP "port unreachable" (ICMPv6: destination unreachable, port unreachable)
    that answers `packet`, a datagram to a port nobody listens on, sent as if by its
    destination and quoting its start (RFC 1122 3.2.2.1, RFC 4443 3.1); None when
    `packet` is not a well-formed IP packet."""
    return _error_packet(
        packet,
        (ICMP_DESTINATION_UNREACHABLE, ICMP_PORT_UNREACHABLE, 0),
        (ICMPV6_DESTINATION_UNREACHABLE, ICMPV6_PORT_UNREACHABLE, 0),
    )


def _error_packet(
    packet: BytesLike, ipv4: tuple[int, int, int], ipv6: tuple[int, int, int]
) -> bytes | None:
    """An ICMP (IPv4) or ICMPv6 error about `packet` from its destination to its source:
    (type, code, the value of the header's last 16 bits for IPv4, 32 bits for IPv6)."""
    addresses = packet_addresses(packet)
    if addresses is None:
        return None
    source, destination, _ = addresses
    if packet[0] >> 4 == IPV4_VERSION:
        quoted = bytes(packet[:_IPV4_QUOTED_BYTES])
        kind, code, value = ipv4
        checksum = internet_checksum(_ICMP_HEADER.pack(kind, code, 0, 0, value) + quoted)
        message = _ICMP_HEADER.pack(kind, code, checksum, 0, value) + quoted
        fields = [IPV4_PLAIN_FIRST_BYTE, 0, IPV4_MIN_HEADER_BYTES + len(message), 0, 0]
        fields += [_TTL, PROTO_ICMP, 0]
        fields[7] = internet_checksum(_IPV4_HEADER.pack(*fields, destination, source))
        return _IPV4_HEADER.pack(*fields, destination, source) + message
    quoted = bytes(packet[:_IPV6_QUOTED_BYTES])
    length = _ICMPV6_ERROR_HEADER.size + len(quoted)
    kind, code, value = ipv6
    pseudo = destination + source + _IPV6_PSEUDO_TAIL.pack(length, PROTO_ICMPV6)
    checksum = internet_checksum(pseudo + _ICMPV6_ERROR_HEADER.pack(kind, code, 0, value) + quoted)
    message = _ICMPV6_ERROR_HEADER.pack(kind, code, checksum, value) + quoted
    return _IPV6_HEADER.pack(_IPV6_FIRST_WORD, length, PROTO_ICMPV6, _TTL, destination, source) + (
        message
    )


class IcmpErrorKind(enum.Enum):
    """What an ICMP error about one of our packets says."""

    TOO_BIG = "too_big"
    """IPv4 "fragmentation needed", ICMPv6 "packet too big": the path carries at most
    `mtu` bytes."""
    PORT_UNREACHABLE = "port_unreachable"
    """Nothing listens on the quoted destination port (ICMPv6: destination unreachable,
    port unreachable)."""
    UNREACHABLE = "unreachable"
    """Any other destination unreachable (host, network, prohibited, ...)."""


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMP error about a TCP segment or UDP datagram (the packet it quotes)."""

    kind: IcmpErrorKind
    protocol: int
    """The quoted packet's: PROTO_TCP or PROTO_UDP."""
    mtu: int
    """The largest packet of the path (TOO_BIG), else 0."""
    sender: bytes
    """Who says so: the error's own source address."""
    source: bytes
    """Our address, as the quoted packet had it."""
    source_port: int
    destination: bytes
    destination_port: int


_IPV4_KINDS: Final = {
    ICMP_FRAGMENTATION_NEEDED: IcmpErrorKind.TOO_BIG,
    ICMP_PORT_UNREACHABLE: IcmpErrorKind.PORT_UNREACHABLE,
}
"""An IPv4 destination unreachable's codes that say more than UNREACHABLE."""
_QUOTED_PROTOCOLS: Final = frozenset({PROTO_TCP, PROTO_UDP})


def parse_icmp_error(packet: BytesLike) -> IcmpError | None:
    """The ICMP (ICMPv6) destination unreachable or "too big" that `packet` is, quoting
    the start of a TCP segment or UDP datagram (addresses and ports); None for anything
    else, truncated or not. Checksums are the caller's."""
    addresses = packet_addresses(packet)
    if addresses is None:
        return None
    if packet[0] >> 4 == IPV4_VERSION:
        header = (packet[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
        if packet[IPV4_PROTOCOL_OFFSET] != PROTO_ICMP or len(packet) < header + _ICMP_HEADER.size:
            return None
        kind, code, _, _, mtu = _ICMP_HEADER.unpack_from(packet, header)
        if kind != ICMP_DESTINATION_UNREACHABLE:
            return None
        meaning = _IPV4_KINDS.get(code, IcmpErrorKind.UNREACHABLE)
        quoted = header + _ICMP_HEADER.size
        if len(packet) < quoted + IPV4_MIN_HEADER_BYTES or packet[quoted] >> 4 != IPV4_VERSION:
            return None
        quoted_ihl = packet[quoted] & IPV4_IHL_MASK
        if quoted_ihl < IPV4_MIN_IHL_WORDS:
            return None  # its ports would be read from its own header
        ports = quoted + quoted_ihl * IPV4_WORD_BYTES
        protocol = packet[quoted + IPV4_PROTOCOL_OFFSET]
        source = bytes(packet[quoted + IPV4_SOURCE_OFFSET : quoted + IPV4_DESTINATION_OFFSET])
        end = quoted + IPV4_DESTINATION_OFFSET + IPV4_ADDRESS_BYTES
        destination = bytes(packet[quoted + IPV4_DESTINATION_OFFSET : end])
    else:
        header = IPV6_HEADER_BYTES
        if (
            packet[IPV6_NEXT_HEADER_OFFSET] != PROTO_ICMPV6
            or len(packet) < header + _ICMPV6_ERROR_HEADER.size
        ):
            return None
        kind, code, _, mtu = _ICMPV6_ERROR_HEADER.unpack_from(packet, header)
        if kind == ICMPV6_PACKET_TOO_BIG:
            meaning = IcmpErrorKind.TOO_BIG
        elif kind == ICMPV6_DESTINATION_UNREACHABLE:
            meaning = (
                IcmpErrorKind.PORT_UNREACHABLE
                if code == ICMPV6_PORT_UNREACHABLE
                else IcmpErrorKind.UNREACHABLE
            )
        else:
            return None
        quoted = header + _ICMPV6_ERROR_HEADER.size
        ports = quoted + IPV6_HEADER_BYTES
        if len(packet) < ports or packet[quoted] >> 4 != IPV6_VERSION:
            return None
        protocol = packet[quoted + IPV6_NEXT_HEADER_OFFSET]
        source = bytes(packet[quoted + IPV6_SOURCE_OFFSET : quoted + IPV6_DESTINATION_OFFSET])
        destination = bytes(packet[quoted + IPV6_DESTINATION_OFFSET : ports])
    if protocol not in _QUOTED_PROTOCOLS or len(packet) < ports + _PORTS.size:
        return None
    source_port, destination_port = _PORTS.unpack_from(packet, ports)
    mtu = mtu if meaning is IcmpErrorKind.TOO_BIG else 0
    return IcmpError(
        meaning, protocol, mtu, addresses[0], source, source_port, destination, destination_port
    )
