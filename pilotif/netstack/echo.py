"""Answers to ICMP and ICMPv6 echo requests sent to the stack's addresses (so `pilotif
ping` reaches a userspace node): the request's identifier, sequence and data back, in a
packet of our own. The echo layout is pilotif.packet.icmp's."""

from typing import Final

from pilotif.netstack.ip_packet import TTL
from pilotif.packet.checksum import ONES, internet_checksum, pseudo_sum_le, sum_le
from pilotif.packet.icmp import ECHO_HEADER
from pilotif.packet.ip import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IPV4_CHECKSUM_OFFSET,
    IPV4_DESTINATION,
    IPV4_IHL_MASK,
    IPV4_MIN_HEADER_BYTES,
    IPV4_PROTOCOL_OFFSET,
    IPV4_SOURCE,
    IPV4_TOTAL_LENGTH_OFFSET,
    IPV4_TTL_OFFSET,
    IPV4_VERSION,
    IPV4_WORD_BYTES,
    IPV6_DESTINATION,
    IPV6_HEADER_BYTES,
    IPV6_NEXT_HEADER_OFFSET,
    IPV6_PAYLOAD_LENGTH_OFFSET,
    IPV6_SOURCE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    BytesLike,
)

_IPV4_HEADER: Final = bytes.fromhex("45000000000040000000000000000000")
_IPV6_VERSION_BYTES: Final = bytes((0x60, 0, 0, 0))
_ICMP_CHECKSUM: Final = slice(2, 4)
"""Where an ICMP (and ICMPv6) message keeps its checksum."""


def is_echo_request(packet: BytesLike) -> bool:
    """Whether a packet is an ICMP or ICMPv6 echo request (lengths not yet checked)."""
    if len(packet) < IPV4_MIN_HEADER_BYTES:
        return False
    if packet[0] >> 4 == IPV4_VERSION:
        header = (packet[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
        return (
            packet[IPV4_PROTOCOL_OFFSET] == PROTO_ICMP
            and len(packet) > header
            and packet[header] == ICMP_ECHO_REQUEST
        )
    return (
        len(packet) > IPV6_HEADER_BYTES
        and packet[IPV6_NEXT_HEADER_OFFSET] == PROTO_ICMPV6
        and packet[IPV6_HEADER_BYTES] == ICMPV6_ECHO_REQUEST
    )


def echo_reply(packet: BytesLike) -> bytes | None:
    """The reply to a well-formed echo request (checksums checked), else None."""
    view = memoryview(packet)
    if view[0] >> 4 == IPV4_VERSION:
        header = (view[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
        total = int.from_bytes(view[IPV4_TOTAL_LENGTH_OFFSET : IPV4_TOTAL_LENGTH_OFFSET + 2])
        if header < IPV4_MIN_HEADER_BYTES or not header + ECHO_HEADER.size <= total <= len(view):
            return None
        message = view[header:total]
        if sum_le(view[:header]) % ONES or sum_le(message) % ONES:
            return None
        reply = bytearray(message)
        reply[0] = ICMP_ECHO_REPLY
        reply[_ICMP_CHECKSUM] = b"\0\0"
        reply[_ICMP_CHECKSUM] = internet_checksum(reply).to_bytes(2)
        ip = bytearray(_IPV4_HEADER)
        ip[IPV4_TOTAL_LENGTH_OFFSET : IPV4_TOTAL_LENGTH_OFFSET + 2] = (
            IPV4_MIN_HEADER_BYTES + len(reply)
        ).to_bytes(2)
        ip[IPV4_TTL_OFFSET], ip[IPV4_PROTOCOL_OFFSET] = TTL, PROTO_ICMP
        ip[IPV4_SOURCE], ip[IPV4_DESTINATION] = view[IPV4_DESTINATION], view[IPV4_SOURCE]
        ip[IPV4_CHECKSUM_OFFSET : IPV4_CHECKSUM_OFFSET + 2] = internet_checksum(ip).to_bytes(2)
        return bytes(ip + reply)
    total = IPV6_HEADER_BYTES + int.from_bytes(
        view[IPV6_PAYLOAD_LENGTH_OFFSET : IPV6_PAYLOAD_LENGTH_OFFSET + 2]
    )
    if total > len(view) or total < IPV6_HEADER_BYTES + ECHO_HEADER.size:
        return None
    source, destination = bytes(view[IPV6_SOURCE]), bytes(view[IPV6_DESTINATION])
    message = view[IPV6_HEADER_BYTES:total]
    if (pseudo_sum_le(source + destination, PROTO_ICMPV6, len(message)) + sum_le(message)) % ONES:
        return None
    reply = bytearray(message)
    reply[0] = ICMPV6_ECHO_REPLY
    reply[_ICMP_CHECKSUM] = b"\0\0"
    pseudo = pseudo_sum_le(destination + source, PROTO_ICMPV6, len(reply))
    total_le = (pseudo + sum_le(reply)) % ONES
    reply[_ICMP_CHECKSUM] = (ONES - total_le).to_bytes(2, "little")
    ip = bytearray(_IPV6_VERSION_BYTES)
    ip += len(reply).to_bytes(2) + bytes((PROTO_ICMPV6, TTL)) + destination + source
    return bytes(ip + reply)
