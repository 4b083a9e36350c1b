"""The IP layer of the stack's packets, read and written once for every protocol on top
(TCP: segment.py, UDP: udp.py): `ip_payload` checks an IPv4 or IPv6 packet from the
network (lengths, the IPv4 header's checksum, no fragments, the protocol) and gives its
addresses and upper-layer bytes or raises `SegmentDrop` with the reason to count;
`ip_packet` lays out a packet we send (`ip_header` its IP header), the upper layer's
checksum written; `transport_checksum_ok` checks an upper-layer checksum with its
pseudo-header. Layouts come from pilotif.packet.ip, the
sums from pilotif.packet.checksum.
"""

import struct
from typing import Final

from pilotif.packet.checksum import ONES, pseudo_sum_le, sum_le
from pilotif.packet.ip import (
    IPV4_ADDRESS_BYTES,
    IPV4_CHECKSUM_OFFSET,
    IPV4_DESTINATION,
    IPV4_DONT_FRAGMENT,
    IPV4_FLAGS_FRAGMENT_OFFSET,
    IPV4_IHL_MASK,
    IPV4_MIN_HEADER_BYTES,
    IPV4_MIN_IHL_WORDS,
    IPV4_PLAIN_FIRST_BYTE,
    IPV4_PROTOCOL_OFFSET,
    IPV4_SOURCE,
    IPV4_TOTAL_LENGTH_OFFSET,
    IPV4_VERSION,
    IPV4_WORD_BYTES,
    IPV6_DESTINATION,
    IPV6_HEADER_BYTES,
    IPV6_NEXT_HEADER_OFFSET,
    IPV6_PAYLOAD_LENGTH_OFFSET,
    IPV6_SOURCE,
    IPV6_VERSION,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    BytesLike,
)

TTL: Final = 64
"""The hop limit of the packets we send."""
_IPV4_MORE_FRAGMENTS_OR_OFFSET: Final = 0x3FFF
_IPV6_VERSION_WORD: Final = 0x60000000
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
_U16_LE = struct.Struct("<H")
_NOT_PROTOCOL: Final = {
    PROTO_TCP: "not_tcp",
    PROTO_UDP: "not_udp",
    PROTO_ICMP: "not_icmp",
    PROTO_ICMPV6: "not_icmp",
}
"""The drop reason of a packet of another protocol than the one asked for."""


class SegmentDrop(ValueError):
    """A packet that is not a well-formed TCP segment (or UDP datagram) for us; `reason`
    names the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ip_payload(
    packet: BytesLike, protocol: int, *, checksums: bool = True
) -> tuple[bytes, bytes, memoryview]:
    """(source, destination, upper-layer bytes) of an IPv4 or IPv6 packet of `protocol`
    (the bytes after the packet's own length left out); raises SegmentDrop for anything
    else (short, bad lengths, fragments, extension headers, a bad IPv4 header checksum
    when `checksums`, another protocol: `not_tcp` / `not_udp` / `not_icmp`)."""
    view = memoryview(packet)
    if not view:
        raise SegmentDrop("truncated")
    version = view[0] >> 4
    if version == IPV4_VERSION:
        if len(view) < IPV4_MIN_HEADER_BYTES:
            raise SegmentDrop("truncated")
        ihl = (view[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
        total = _U16.unpack_from(view, IPV4_TOTAL_LENGTH_OFFSET)[0]
        if ihl < IPV4_MIN_IHL_WORDS * IPV4_WORD_BYTES or not ihl <= total <= len(view):
            raise SegmentDrop("truncated")
        if checksums and sum_le(view[:ihl]) % ONES != 0:
            raise SegmentDrop("bad_checksum")
        if _U16.unpack_from(view, IPV4_FLAGS_FRAGMENT_OFFSET)[0] & _IPV4_MORE_FRAGMENTS_OR_OFFSET:
            raise SegmentDrop("fragment")
        if view[IPV4_PROTOCOL_OFFSET] != protocol:
            raise SegmentDrop(_NOT_PROTOCOL[protocol])
        return bytes(view[IPV4_SOURCE]), bytes(view[IPV4_DESTINATION]), view[ihl:total]
    if version == IPV6_VERSION:
        if len(view) < IPV6_HEADER_BYTES:
            raise SegmentDrop("truncated")
        total = IPV6_HEADER_BYTES + _U16.unpack_from(view, IPV6_PAYLOAD_LENGTH_OFFSET)[0]
        if total > len(view):
            raise SegmentDrop("truncated")
        if view[IPV6_NEXT_HEADER_OFFSET] != protocol:
            raise SegmentDrop(_NOT_PROTOCOL[protocol])
        source, destination = bytes(view[IPV6_SOURCE]), bytes(view[IPV6_DESTINATION])
        return source, destination, view[IPV6_HEADER_BYTES:total]
    raise SegmentDrop("not_ip")


def transport_checksum_ok(
    source: bytes, destination: bytes, protocol: int, upper: BytesLike
) -> bool:
    """Whether the upper-layer bytes' checksum (with the pseudo-header) sums right."""
    return (pseudo_sum_le(source + destination, protocol, len(upper)) + sum_le(upper)) % ONES == 0


def ip_header(source: bytes, destination: bytes, protocol: int, upper_bytes: int) -> bytearray:
    """The IPv4 (4-byte addresses: with its checksum, don't fragment) or IPv6 header of a
    packet we send carrying `upper_bytes` of `protocol`."""
    if len(source) == IPV4_ADDRESS_BYTES:
        length = IPV4_MIN_HEADER_BYTES + upper_bytes
        fields = (IPV4_PLAIN_FIRST_BYTE, 0, length, 0, IPV4_DONT_FRAGMENT, TTL, protocol, 0)
        ip = bytearray(_IPV4.pack(*fields, source, destination))
        _U16_LE.pack_into(ip, IPV4_CHECKSUM_OFFSET, ONES - sum_le(ip))
        return ip
    return bytearray(
        _IPV6.pack(_IPV6_VERSION_WORD, upper_bytes, protocol, TTL, source, destination)
    )


def ip_packet(
    source: bytes,
    destination: bytes,
    protocol: int,
    header: bytearray,
    payload: BytesLike,
    checksum_at: int | None,
) -> bytes:
    """A whole packet we send: the IP header, the upper layer's `header` (its checksum
    written at `checksum_at` over the pseudo-header, header and payload; never 0, which
    UDP reads as none; None leaves the field as it is), then `payload`."""
    length = len(header) + len(payload)
    if checksum_at is not None:
        total = (
            pseudo_sum_le(source + destination, protocol, length) + sum_le(header) + sum_le(payload)
        ) % ONES
        _U16_LE.pack_into(header, checksum_at, ONES - total)
    packet = ip_header(source, destination, protocol, length)
    packet += header
    packet += payload
    return bytes(packet)
