"""A STUN server for the lab (RFC 5389 Binding, with RFC 5780's CHANGE-REQUEST): it
answers from its other address and/or port when asked, which is how miniupnpd's STUN
test tells an unfiltered external address (port forwarding works) from a filtered one.
Every answer carries MAPPED-ADDRESS and XOR-MAPPED-ADDRESS.

    python3 -m pilotif_lab.stun_server PRIMARY_IP ALTERNATE_IP PORT ALTERNATE_PORT

It listens on PRIMARY_IP:PORT and runs until it is stopped (by PID).
"""

import select
import socket
import struct
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Final

BINDING_REQUEST: Final = 0x0001
BINDING_RESPONSE: Final = 0x0101
MAGIC_COOKIE: Final = 0x2112A442
HEADER: Final = struct.Struct("!HHI12s")
ATTRIBUTE: Final = struct.Struct("!HH")
MAPPED_ADDRESS: Final = 0x0001
CHANGE_REQUEST: Final = 0x0003
XOR_MAPPED_ADDRESS: Final = 0x8020
CHANGE_IP: Final = 0x4
CHANGE_PORT: Final = 0x2
FAMILY_IPV4: Final = 0x01
MAX_DATAGRAM_BYTES: Final = 2048


def _change_flags(message: bytes) -> int:
    """The CHANGE-REQUEST flags of a Binding Request (0 without one)."""
    offset = HEADER.size
    while offset + ATTRIBUTE.size <= len(message):
        kind, length = ATTRIBUTE.unpack_from(message, offset)
        offset += ATTRIBUTE.size
        if kind == CHANGE_REQUEST and length == 4 and offset + 4 <= len(message):
            return int(struct.unpack_from("!I", message, offset)[0])
        offset += (length + 3) & ~3
    return 0


def answer(message: bytes, source: tuple[str, int]) -> tuple[bytes, int] | None:
    """The Binding Response to `message` from `source` and the CHANGE-REQUEST flags, or
    None for anything that is not a Binding Request."""
    if len(message) < HEADER.size:
        return None
    kind, _, cookie, transaction = HEADER.unpack_from(message)
    if kind != BINDING_REQUEST or cookie != MAGIC_COOKIE:
        return None
    address, port = IPv4Address(source[0]).packed, source[1]
    xored_address = (int.from_bytes(address, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
    attributes = ATTRIBUTE.pack(MAPPED_ADDRESS, 8) + struct.pack(
        "!BBH4s", 0, FAMILY_IPV4, port, address
    )
    attributes += ATTRIBUTE.pack(XOR_MAPPED_ADDRESS, 8) + struct.pack(
        "!BBH4s", 0, FAMILY_IPV4, port ^ (MAGIC_COOKIE >> 16), xored_address
    )
    header = HEADER.pack(BINDING_RESPONSE, len(attributes), MAGIC_COOKIE, transaction)
    return header + attributes, _change_flags(message)


def serve(primary: str, alternate: str, port: int, alternate_port: int) -> None:
    """Answer on primary:port, from whichever of the four address and port pairs the
    request asks for."""
    sockets: dict[tuple[bool, bool], socket.socket] = {}
    for change_ip in (False, True):
        for change_port in (False, True):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(
                (alternate if change_ip else primary, alternate_port if change_port else port)
            )
            sockets[(change_ip, change_port)] = sock
    listening = sockets[(False, False)]
    print("ready", flush=True)
    while True:
        select.select([listening], [], [])
        message, source = listening.recvfrom(MAX_DATAGRAM_BYTES)
        answered = answer(message, source)
        if answered is not None:
            data, flags = answered
            key = (bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT))
            sockets[key].sendto(data, source)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    serve(args[0], args[1], int(args[2]), int(args[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
