"""TCP segments in IPv4 and IPv6 packets, read and written: `parse_segment` checks a
packet from the network (lengths, checksums, options) and gives a `Segment` or raises
`SegmentDrop` with the reason to count; `build_segment` lays out one packet with its
checksums; `unwrap` turns a wire sequence number into an offset. The IP layer is
ip_packet.py's (SegmentDrop is its, named here too), the sums pilotif.packet.checksum's.
"""

import struct
from dataclasses import dataclass
from typing import Final

from pilotif.netstack.ip_packet import (
    SegmentDrop as SegmentDrop,
)
from pilotif.netstack.ip_packet import (
    ip_packet,
    ip_payload,
    transport_checksum_ok,
)
from pilotif.packet.ip import PROTO_TCP, TCP_CHECKSUM_OFFSET, TCP_MIN_HEADER_BYTES, BytesLike

SEQ_SPACE: Final = 2**32
_HALF_SPACE: Final = 2**31
TCP_RST: Final = 0x04
"""The reset flag (pilotif.packet.ip names the others)."""
OPTION_END: Final = 0
OPTION_NOP: Final = 1
OPTION_MSS: Final = 2
OPTION_WINDOW_SCALE: Final = 3
OPTION_SACK_PERMITTED: Final = 4
OPTION_SACK: Final = 5
MAX_SACK_BLOCKS: Final = 4
"""The most SACK blocks 40 bytes of options hold (without timestamps)."""
_TCP_WORD_BYTES: Final = 4
_TCP = struct.Struct("!HHIIBBHHH")
_U16 = struct.Struct("!H")
_U32_PAIR = struct.Struct("!II")


def unwrap(wire: int, base: int, near: int) -> int:
    """The offset from wire sequence number `base` of `wire`, taken as the one nearest
    to the offset `near`."""
    diff = (wire - base - near) % SEQ_SPACE
    return near + (diff - SEQ_SPACE if diff >= _HALF_SPACE else diff)


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment as read from the network (sequence numbers as on the wire)."""

    source: bytes
    """The remote address (4 or 16 bytes)."""
    destination: bytes
    """Our address it was sent to."""
    source_port: int
    destination_port: int
    seq: int
    ack: int
    flags: int
    window: int
    """The window field as sent (not yet scaled)."""
    payload: memoryview
    """The data (a view into the packet: copy what must outlive it)."""
    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    """(left edge, right edge) pairs as sent."""


def parse_segment(packet: BytesLike, *, checksums: bool = True) -> Segment:
    """The TCP segment in an IPv4 or IPv6 packet; raises SegmentDrop for anything else
    (short, bad lengths, fragments, extension headers, bad checksums, not TCP). Without
    `checksums` the sums are not checked (the packet's integrity is known otherwise: it
    was authenticated by WireGuard, or merged from segments whose sums were left to the
    receiver, as a TUN's GRO write does)."""
    source, destination, tcp = ip_payload(packet, PROTO_TCP, checksums=checksums)
    if len(tcp) < TCP_MIN_HEADER_BYTES:
        raise SegmentDrop("truncated")
    sport, dport, seq, ack, offset, flags, window, _checksum, _urgent = _TCP.unpack_from(tcp)
    header = (offset >> 4) * _TCP_WORD_BYTES
    if not TCP_MIN_HEADER_BYTES <= header <= len(tcp):
        raise SegmentDrop("truncated")
    if checksums and not transport_checksum_ok(source, destination, PROTO_TCP, tcp):
        raise SegmentDrop("bad_checksum")
    mss, scale, sack_ok, blocks = _parse_options(tcp[TCP_MIN_HEADER_BYTES:header])
    return Segment(
        source, destination, sport, dport, seq, ack, flags, window, tcp[header:],
        mss, scale, sack_ok, blocks,
    )  # fmt: skip


def _parse_options(
    options: memoryview,
) -> tuple[int | None, int | None, bool, tuple[tuple[int, int], ...]]:
    """MSS, window scale, SACK permitted and SACK blocks; parsing stops at a malformed
    option (what follows it is ignored, as Linux does)."""
    mss: int | None = None
    scale: int | None = None
    sack_ok = False
    blocks: tuple[tuple[int, int], ...] = ()
    at = 0
    while at < len(options):
        kind = options[at]
        if kind == OPTION_END:
            break
        if kind == OPTION_NOP:
            at += 1
            continue
        if at + 1 >= len(options):
            break
        length = options[at + 1]
        if length < 2 or at + length > len(options):
            break
        if kind == OPTION_MSS and length == 4:
            mss = _U16.unpack_from(options, at + 2)[0]
        elif kind == OPTION_WINDOW_SCALE and length == 3:
            scale = options[at + 2]
        elif kind == OPTION_SACK_PERMITTED and length == 2:
            sack_ok = True
        elif kind == OPTION_SACK and (length - 2) % 8 == 0:
            blocks = tuple(
                _U32_PAIR.unpack_from(options, at + 2 + 8 * i) for i in range((length - 2) // 8)
            )
        at += length
    return mss, scale, sack_ok, blocks


def syn_options(mss: int, window_scale: int | None, sack_permitted: bool) -> bytes:
    """The options of a SYN or SYN-ACK, padded to whole words."""
    options = bytes((OPTION_MSS, 4)) + _U16.pack(mss)
    if window_scale is not None:
        options += bytes((OPTION_NOP, OPTION_WINDOW_SCALE, 3, window_scale))
    if sack_permitted:
        options += bytes((OPTION_NOP, OPTION_NOP, OPTION_SACK_PERMITTED, 2))
    return options


def sack_option_bytes(blocks: int) -> int:
    """The length of a SACK option with `blocks` blocks (and its two NOPs)."""
    return 4 + _U32_PAIR.size * blocks if blocks else 0


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    """A SACK option (two NOPs first, so it ends on a word) for up to MAX_SACK_BLOCKS
    (left, right) pairs as sent."""
    blocks = blocks[:MAX_SACK_BLOCKS]
    if not blocks:
        return b""
    body = b"".join(_U32_PAIR.pack(left, right) for left, right in blocks)
    return bytes((OPTION_NOP, OPTION_NOP, OPTION_SACK, 2 + len(body))) + body


def build_segment(
    source: bytes,
    destination: bytes,
    ports: tuple[int, int],
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes = b"",
    payload: BytesLike = b"",
    *,
    tcp_checksum: bool = True,
) -> bytes:
    """One IPv4 (4-byte addresses) or IPv6 packet carrying a TCP segment, with the IPv4
    header's checksum and the TCP checksum (without `tcp_checksum`, 0: a large segment's
    segments get theirs as they are cut). `options` must be whole words."""
    header_len = TCP_MIN_HEADER_BYTES + len(options)
    tcp_header = bytearray(
        _TCP.pack(ports[0], ports[1], seq, ack, (header_len // 4) << 4, flags, window, 0, 0)
    )
    tcp_header += options
    checksum_at = TCP_CHECKSUM_OFFSET if tcp_checksum else None
    return ip_packet(source, destination, PROTO_TCP, tcp_header, payload, checksum_at)
