"""`pilotif ping`: ICMP echo to a peer's overlay address over a raw socket (root)."""

import os
import select
import socket
import time
from typing import Final

from pilotif.packet.icmp import ECHO_HEADER, ECHO_REPLY, echo_message

REPLY_TIMEOUT_S: Final = 2.0
_IPV4_HEADER_MIN_BYTES = 20
_RECEIVE_BYTES = 2048


def ping_once(address: str, sequence: int) -> float | None:
    """The round trip in ms of one echo to an IPv4 `address`, or None on timeout."""
    ident = os.getpid() & 0xFFFF
    packet = echo_message(ident, sequence)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        start = time.monotonic()
        sock.sendto(packet, (address, 0))
        deadline = start + REPLY_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], remaining)
            if not ready:
                break
            data, source = sock.recvfrom(_RECEIVE_BYTES)
            offset = (data[0] & 0x0F) * 4 if data else _IPV4_HEADER_MIN_BYTES
            if source[0] != address or len(data) < offset + ECHO_HEADER.size:
                continue
            kind, _, _, reply_ident, reply_sequence = ECHO_HEADER.unpack_from(data, offset)
            if kind == ECHO_REPLY and reply_ident == ident and reply_sequence == sequence:
                return (time.monotonic() - start) * 1000
    return None
