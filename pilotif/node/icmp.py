"""One ICMP echo over the overlay, for `pilotif ping` (a raw socket: root)."""

import os
import select
import socket
import struct
import time

_ECHO_REQUEST = 8
_ECHO_REPLY = 0
_HEADER = struct.Struct("!BBHHH")
_PAYLOAD = b"pilotif-ping-0123456789abcdef"
REPLY_TIMEOUT_S = 2.0
_IPV4_HEADER_MIN = 20


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping_once(address: str, sequence: int) -> float | None:
    """The round trip in ms of one echo to an IPv4 `address`, or None on timeout."""
    ident = os.getpid() & 0xFFFF
    header = _HEADER.pack(_ECHO_REQUEST, 0, 0, ident, sequence)
    packet = (
        _HEADER.pack(_ECHO_REQUEST, 0, _checksum(header + _PAYLOAD), ident, sequence) + _PAYLOAD
    )
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
