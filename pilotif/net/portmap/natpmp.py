"""NAT-PMP (RFC 6886), sans-IO: the requests a client sends to its gateway's port 5351
and the gateway's answers, as bytes. Only what a node needs: the external address and a
UDP mapping (lifetime 0 deletes it). Answers that are short, of another version or
opcode, are `PortMapError`s (the peer's garbage: the caller counts and drops them).
"""

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from pilotif.net.portmap.errors import PortMapError

PORT: Final = 5351
"""The gateway's NAT-PMP (and PCP) port."""
VERSION: Final = 0
OP_EXTERNAL_ADDRESS: Final = 0
OP_MAP_UDP: Final = 1
RESPONSE_BIT: Final = 128
RESULT_SUCCESS: Final = 0
RESULT_UNSUPPORTED_VERSION: Final = 1
RESULT_NETWORK_FAILURE: Final = 3
"""The gateway has no external address to give (e.g. its own is private)."""
_EXTERNAL_ADDRESS_ANSWER: Final = struct.Struct("!BBHI4s")
_MAP_REQUEST: Final = struct.Struct("!BBHHHI")
_MAP_ANSWER: Final = struct.Struct("!BBHIHHI")
_HEADER: Final = struct.Struct("!BBH")


@dataclass(frozen=True)
class ExternalAddress:
    """The gateway's answer to an external address request."""

    epoch_s: int
    """Seconds since the gateway's mappings were (re)started."""
    address: IPv4Address


@dataclass(frozen=True)
class Mapped:
    """The gateway's answer to a mapping request."""

    epoch_s: int
    internal_port: int
    external_port: int
    lifetime_s: int
    """0: the mapping is gone (the answer to a deletion)."""


def external_address_request() -> bytes:
    """Ask for the gateway's external IPv4 address."""
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def map_udp_request(internal_port: int, external_port: int, lifetime_s: int) -> bytes:
    """Ask for a UDP mapping of `internal_port` (the gateway may give another external
    port than the one suggested); lifetime 0 (with external port 0) deletes it."""
    return _MAP_REQUEST.pack(VERSION, OP_MAP_UDP, 0, internal_port, external_port, lifetime_s)


def _result(data: bytes, op: int, size: int) -> None:
    if len(data) < _HEADER.size:
        raise PortMapError("truncated", f"NAT-PMP answer of {len(data)} bytes")
    version, opcode, result = _HEADER.unpack_from(data)
    if version != VERSION or opcode != RESPONSE_BIT | op:
        raise PortMapError("unexpected", f"NAT-PMP version {version} opcode {opcode}")
    if result != RESULT_SUCCESS:
        raise PortMapError("refused", f"NAT-PMP result code {result}", result=result)
    if len(data) < size:
        raise PortMapError("truncated", f"NAT-PMP answer of {len(data)} bytes")


def parse_external_address(data: bytes) -> ExternalAddress:
    """The gateway's answer to `external_address_request` (PortMapError if it is not
    one, or a refusal)."""
    _result(data, OP_EXTERNAL_ADDRESS, _EXTERNAL_ADDRESS_ANSWER.size)
    _, _, _, epoch, address = _EXTERNAL_ADDRESS_ANSWER.unpack_from(data)
    return ExternalAddress(epoch, IPv4Address(address))


def parse_map_udp(data: bytes) -> Mapped:
    """The gateway's answer to `map_udp_request` (PortMapError if it is not one, or a
    refusal)."""
    _result(data, OP_MAP_UDP, _MAP_ANSWER.size)
    _, _, _, epoch, internal, external, lifetime = _MAP_ANSWER.unpack_from(data)
    return Mapped(epoch, internal, external, lifetime)
