"""ICMP echo messages: the echo request a `pilotif ping` sends and the whole IPv4 packet
carrying one that the node injects to check that a direct path still answers."""

import socket
import struct
from ipaddress import IPv4Address
from typing import Final

from pilotif.tun.offload import internet_checksum

ECHO_REQUEST: Final = 8
ECHO_REPLY: Final = 0
ECHO_HEADER: Final = struct.Struct("!BBHHH")
_PAYLOAD: Final = b"pilotif-ping-0123456789abcdef"
_IPV4_HEADER_MIN = 20
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
    fields = [0x45, 0, _IPV4_HEADER_MIN + len(message), 0, 0, _TTL, socket.IPPROTO_ICMP, 0]
    header = _IPV4_HEADER.pack(*fields, source.packed, destination.packed)
    fields[7] = internet_checksum(header)
    return _IPV4_HEADER.pack(*fields, source.packed, destination.packed) + message
