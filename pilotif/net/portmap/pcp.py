"""PCP (RFC 6887), sans-IO: the MAP request for a UDP port and the gateway's answer, as
bytes (the gateway listens on NAT-PMP's port, 5351). IPv4 addresses travel as
IPv4-mapped IPv6 addresses. The answer must carry our request's nonce: one that does not
is not ours. Short answers, other versions or opcodes are `PortMapError`s; so is a
NAT-PMP gateway's answer (version 0) to our PCP request, which tells the client to fall
back to NAT-PMP.
"""

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from pilotif.net.portmap.errors import PortMapError

VERSION: Final = 2
OP_MAP: Final = 1
RESPONSE_BIT: Final = 0x80
PROTOCOL_UDP: Final = 17
NONCE_BYTES: Final = 12
RESULT_SUCCESS: Final = 0
NATPMP_VERSION: Final = 0
"""A NAT-PMP gateway answers a PCP request with this version (and UNSUPP_VERSION)."""
_REQUEST_HEADER: Final = struct.Struct("!BBHI16s")
_ANSWER_HEADER: Final = struct.Struct("!BBBBII12x")
_MAP: Final = struct.Struct("!12sB3xHH16s")
REQUEST_BYTES: Final = _REQUEST_HEADER.size + _MAP.size
"""60: the common header (24) and the MAP opcode's fields (36)."""
_ANY_IPV4: Final = IPv6Address("::ffff:0.0.0.0").packed
"""No preference for the external address: the IPv4 one (RFC 6887 section 11.1)."""
_ANY_IPV6: Final = bytes(16)


@dataclass(frozen=True)
class PcpMapped:
    """The gateway's answer to a MAP request."""

    epoch_s: int
    lifetime_s: int
    """0: the mapping is gone (the answer to a deletion)."""
    internal_port: int
    external_port: int
    external_address: IPv4Address | IPv6Address


def _wire_address(address: IPv4Address | IPv6Address) -> bytes:
    if isinstance(address, IPv4Address):
        return IPv6Address(f"::ffff:{address}").packed
    return address.packed


def _from_wire(packed: bytes) -> IPv4Address | IPv6Address:
    address = IPv6Address(packed)
    return address.ipv4_mapped or address


def map_udp_request(
    client: IPv4Address | IPv6Address,
    nonce: bytes,
    internal_port: int,
    external_port: int,
    lifetime_s: int,
) -> bytes:
    """A MAP request for UDP `internal_port` of `client` (the address the request
    leaves from: the gateway checks it); lifetime 0 deletes the mapping."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a PCP nonce is {NONCE_BYTES} bytes")
    header = _REQUEST_HEADER.pack(VERSION, OP_MAP, 0, lifetime_s, _wire_address(client))
    suggested = _ANY_IPV4 if isinstance(client, IPv4Address) else _ANY_IPV6
    return header + _MAP.pack(nonce, PROTOCOL_UDP, internal_port, external_port, suggested)


def parse_map_udp(data: bytes, nonce: bytes) -> PcpMapped:
    """The gateway's answer to our `map_udp_request` with `nonce` (PortMapError if it
    is not one, or a refusal; code 'unsupported_version' from a NAT-PMP gateway)."""
    if len(data) < 2:
        raise PortMapError("truncated", f"PCP answer of {len(data)} bytes")
    if data[0] == NATPMP_VERSION:
        raise PortMapError("unsupported_version", "the gateway speaks NAT-PMP, not PCP")
    if len(data) < _ANSWER_HEADER.size:
        raise PortMapError("truncated", f"PCP answer of {len(data)} bytes")
    version, opcode, _, result, lifetime, epoch = _ANSWER_HEADER.unpack_from(data)
    if version != VERSION or opcode != RESPONSE_BIT | OP_MAP:
        raise PortMapError("unexpected", f"PCP version {version} opcode {opcode}")
    if result != RESULT_SUCCESS:
        raise PortMapError("refused", f"PCP result code {result}", result=result)
    if len(data) < REQUEST_BYTES:
        raise PortMapError("truncated", f"PCP answer of {len(data)} bytes")
    answered, protocol, internal, external, address = _MAP.unpack_from(data, _ANSWER_HEADER.size)
    if answered != nonce or protocol != PROTOCOL_UDP:
        raise PortMapError("unexpected", "a PCP answer to another request")
    return PcpMapped(epoch, lifetime, internal, external, _from_wire(address))
