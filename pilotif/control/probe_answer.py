"""The registry's and each relay's answer to a netcheck probe (0x58), sans-IO: as STUN
does, it tells the sender the address and port its datagram came from, and how many
bytes arrived (a padded probe measures the path MTU towards us).

    probe   0x58 0 0 0 | id (12 bytes) | zeros up to the probe's size (>= 36 bytes)
    answer  0x59 0 0 0 | id (12 bytes) | size (uint16) | port (uint16) | address (16)

Integers are big-endian; the address is IPv6, or IPv4-mapped (::ffff:a.b.c.d). The answer
is 36 bytes and a probe at least as large, so it never carries more bytes than it was
sent: a spoofed probe amplifies nothing. Unauthenticated, so no state moves, and the
answers to one address are counted against the same budget as every other answer to an
unproven address (the gate's). Anything else of type 0x58 is dropped and counted.
"""

import struct
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from pilotif.control.front import DatagramHandler
from pilotif.control.gate import ControlGate, Outgoing
from pilotif.control.wire import WireError
from pilotif.wg.events import Endpoint

PROBE_TYPE: Final = 0x58
ANSWER_TYPE: Final = 0x59
PROBE_ID_BYTES: Final = 12
_ANSWER: Final = struct.Struct("!B3x12sHH16s")
ANSWER_SIZE: Final = _ANSWER.size
MIN_PROBE_SIZE: Final = ANSWER_SIZE
"""The smallest probe answered: no answer is larger than what asked for it."""
MAX_PROBE_SIZE: Final = 65_507
"""The largest UDP payload over IPv4."""
_HEADER_SIZE: Final = 4 + PROBE_ID_BYTES
_PROBE_HEADER: Final = bytes((PROBE_TYPE, 0, 0, 0))

assert ANSWER_SIZE == 36


@dataclass(frozen=True)
class ProbeAnswer:
    """What a server said of one probe."""

    probe_id: bytes
    size: int
    """How many bytes of the probe arrived."""
    seen_from: Endpoint
    """The address and port the probe came from (our public endpoint towards it)."""


def pack_probe(probe_id: bytes, size: int = MIN_PROBE_SIZE) -> bytes:
    """A probe of `size` bytes; ValueError for a size or id out of range."""
    if len(probe_id) != PROBE_ID_BYTES or not MIN_PROBE_SIZE <= size <= MAX_PROBE_SIZE:
        raise ValueError(f"a probe has a {PROBE_ID_BYTES}-byte id and {MIN_PROBE_SIZE}+ bytes")
    return _PROBE_HEADER + probe_id + bytes(size - _HEADER_SIZE)


def probe_id_of(data: bytes) -> bytes:
    """The id of a well-formed probe; WireError for anything else."""
    if not MIN_PROBE_SIZE <= len(data) <= MAX_PROBE_SIZE:
        raise WireError("malformed", "a probe's size is out of range")
    if data[:4] != _PROBE_HEADER or data.count(0, _HEADER_SIZE) != len(data) - _HEADER_SIZE:
        raise WireError("malformed", "not a netcheck probe")
    return bytes(data[4:_HEADER_SIZE])


def pack_answer(probe: bytes, source: Endpoint) -> bytes:
    """The answer to `probe` (well-formed) that arrived from `source`."""
    address = ip_address(source[0])
    if isinstance(address, IPv4Address):
        address = IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
    return _ANSWER.pack(ANSWER_TYPE, probe_id_of(probe), len(probe), source[1], address.packed)


def parse_answer(data: bytes) -> ProbeAnswer:
    """The answer a datagram carries; WireError if it is not one."""
    if len(data) != ANSWER_SIZE or data[:4] != bytes((ANSWER_TYPE, 0, 0, 0)):
        raise WireError("malformed", "not a netcheck answer")
    _, probe_id, size, port, packed = _ANSWER.unpack(data)
    address = IPv6Address(packed)
    host = address.ipv4_mapped or address
    return ProbeAnswer(probe_id, size, (str(host), port))


def answering_probes(
    gate: ControlGate, counters: Counter[str], other: DatagramHandler
) -> DatagramHandler:
    """A handler of a core's other datagrams (`ByType`'s third) that answers probes
    first and hands everything else to `other`."""

    def handle(data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        if not data or data[0] != PROBE_TYPE:
            return other(data, source, now)
        try:
            answer = pack_answer(data, source)
        except WireError:
            counters["malformed"] += 1
            return []
        if not gate.unproven_allowed(source, now):
            return []
        return [(answer, source)]

    return handle
