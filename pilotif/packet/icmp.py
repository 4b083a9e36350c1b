"""ICMP echo messages: the echo request a `pilotif ping` sends and the whole IPv4 packet
carrying one that the node injects to check that a direct path still answers."""

import struct
from ipaddress import IPv4Address
from typing import Final

from pilotif.packet.checksum import internet_checksum
from pilotif.packet.ip import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    IPV4_MIN_HEADER_BYTES,
    IPV4_PLAIN_FIRST_BYTE,
    PROTO_ICMP,
)

ECHO_REQUEST: Final = ICMP_ECHO_REQUEST
ECHO_REPLY: Final = ICMP_ECHO_REPLY
ECHO_HEADER: Final = struct.Struct("!BBHHH")
_PAYLOAD: Final = b"pilotif-ping-0123456789abcdef"
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_TTL = 64
_PATH_CHECK_IDENT = 0x7069


def echo_message(ident: int, sequence: int) -> bytes:
    """An ICMP echo request (header and payload) with its checksum."""
    header = ECHO_HEADER.pack(ECHO_REQUEST, 0, 0, ident, sequence)
    checksum = internet_checksum(header + _PAYLOAD)
    return ECHO_HEADER.pack(ECHO_REQUEST, 0, checksum, ident, sequence) + _PAYLOAD


def echo_request_packet(source: IPv4Address, destination: IPv4Address, sequence: int) -> bytes:
    """A whole IPv4 packet carrying an ICMP echo request, ready for the overlay device."""
    message = echo_message(_PATH_CHECK_IDENT, sequence & 0xFFFF)
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
