"""SOCKS5's addresses and UDP header (RFC 1928 sections 5 and 7), read and written once
for the SOCKS5 server's requests (socks5.py) and its UDP relay (socks5_udp.py).

An address is ATYP (1: IPv4, 3: a name of 1-255 bytes, 4: IPv6), the address, a 16-bit
port. A UDP datagram between client and relay is RSV (2 bytes), FRAG (1 byte), then an
address and the data. Hostile input raises `Socks5WireError` with the reason to count,
never anything else.
"""

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Final

ATYP_IPV4: Final = 1
ATYP_DOMAIN: Final = 3
ATYP_IPV6: Final = 4
IPV4_BYTES: Final = 4
IPV6_BYTES: Final = 16
FRAG_WHOLE: Final = 0
"""FRAG of a datagram that is not a fragment (the only kind the relay takes)."""
PORT: Final = struct.Struct("!H")
_UDP_HEAD: Final = struct.Struct("!HBB")
"""RSV, FRAG, ATYP."""
_RSV_FRAG: Final = struct.Struct("!HB")
_FIXED_BYTES: Final = {ATYP_IPV4: IPV4_BYTES, ATYP_IPV6: IPV6_BYTES}
ADDRESS_TYPES: Final = frozenset((ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6))


class Socks5WireError(ValueError):
    """Bytes that are not a SOCKS5 address or UDP datagram; `reason` names the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def address_rest_bytes(kind: int, first: int) -> int:
    """How many bytes follow an address's first byte `first` (the port included), for a
    reader of a stream; Socks5WireError for an unknown ATYP."""
    fixed = _FIXED_BYTES.get(kind)
    if fixed is not None:
        return fixed - 1 + PORT.size
    if kind == ATYP_DOMAIN:
        return first + PORT.size
    raise Socks5WireError("address_type_unsupported")


def parse_address(kind: int, data: bytes | memoryview) -> tuple[str, int, int]:
    """(host, port, bytes used) of the address of type `kind` at the start of `data`
    (a name as sent, decoded as ASCII with replacements: the node resolves it)."""
    if not data:
        raise Socks5WireError("truncated")
    at = address_rest_bytes(kind, data[0]) + 1
    if len(data) < at:
        raise Socks5WireError("truncated")
    raw = bytes(data[: at - PORT.size])
    if kind == ATYP_IPV4:
        host = str(IPv4Address(raw))
    elif kind == ATYP_IPV6:
        host = str(IPv6Address(raw))
    else:
        host = raw[1:].decode("ascii", "replace")
    (port,) = PORT.unpack_from(data, at - PORT.size)
    return host, port, at


def pack_address(address: IPv4Address | IPv6Address, port: int) -> bytes:
    """ATYP, the address and the port."""
    kind = ATYP_IPV4 if isinstance(address, IPv4Address) else ATYP_IPV6
    return bytes([kind]) + address.packed + PORT.pack(port)


def parse_udp_datagram(datagram: bytes | memoryview) -> tuple[str, int, memoryview]:
    """(destination host, port, data) of a client's datagram to the relay; a fragment
    (FRAG != 0) raises with reason `fragment` (not supported), RSV is not checked."""
    view = memoryview(datagram)
    if len(view) < _UDP_HEAD.size:
        raise Socks5WireError("truncated")
    _, fragment, kind = _UDP_HEAD.unpack_from(view)
    if fragment != FRAG_WHOLE:
        raise Socks5WireError("fragment")
    host, port, used = parse_address(kind, view[_UDP_HEAD.size :])
    return host, port, view[_UDP_HEAD.size + used :]


def udp_datagram_header(source: IPv4Address | IPv6Address, port: int) -> bytes:
    """The header of a datagram the relay hands its client: RSV, FRAG 0, the sender."""
    return _RSV_FRAG.pack(0, FRAG_WHOLE) + pack_address(source, port)
