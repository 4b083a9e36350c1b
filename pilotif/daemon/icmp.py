"""ICMP echo over the overlay: `pilotif ping` (a raw socket: root), and the echo
requests the daemon injects to check that a direct path still answers."""

import os
import select
import socket
import struct
import time
from ipaddress import IPv4Address

from pilotif.tun.offload import internet_checksum

_ECHO_REQUEST = 8
_ECHO_REPLY = 0
_HEADER = struct.Struct("!BBHHH")
_PAYLOAD = b"pilotif-ping-0123456789abcdef"
REPLY_TIMEOUT_S = 2.0
_IPV4_HEADER_MIN = 20
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_TTL = 64
_PATH_CHECK_IDENT = 0x7069


def _echo_message(ident: int, sequence: int) -> bytes:
    header = _HEADER.pack(_ECHO_REQUEST, 0, 0, ident, sequence)
    checksum = internet_checksum(header + _PAYLOAD)
    return _HEADER.pack(_ECHO_REQUEST, 0, checksum, ident, sequence) + _PAYLOAD


def echo_request_packet(source: IPv4Address, destination: IPv4Address, sequence: int) -> bytes:
    """A whole IPv4 packet carrying an ICMP echo request, ready for the overlay device."""
    message = _echo_message(_PATH_CHECK_IDENT, sequence & 0xFFFF)
    fields = [0x45, 0, _IPV4_HEADER_MIN + len(message), 0, 0, _TTL, socket.IPPROTO_ICMP, 0]
    header = _IPV4_HEADER.pack(*fields, source.packed, destination.packed)
    fields[7] = internet_checksum(header)
    return _IPV4_HEADER.pack(*fields, source.packed, destination.packed) + message


def ping_once(address: str, sequence: int) -> float | None:
    """The round trip in ms of one echo to an IPv4 `address`, or None on timeout."""
    ident = os.getpid() & 0xFFFF
    packet = _echo_message(ident, sequence)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        start = time.monotonic()
        sock.sendto(packet, (address, 0))
        deadline = start + REPLY_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], remaining)
            if not ready:
                break
            data, source = sock.recvfrom(2048)
            offset = (data[0] & 0x0F) * 4 if data else _IPV4_HEADER_MIN
            if source[0] != address or len(data) < offset + _HEADER.size:
                continue
            kind, _, _, reply_ident, reply_sequence = _HEADER.unpack_from(data, offset)
            if kind == _ECHO_REPLY and reply_ident == ident and reply_sequence == sequence:
                return (time.monotonic() - start) * 1000
    return None
