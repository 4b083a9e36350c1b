"""TCP segments in IPv4 and IPv6 packets, read and written: `parse_segment` checks a
packet from the network (lengths, checksums, options) and gives a `Segment` or raises
`SegmentDrop` with the reason to count; `build_segment` lays out one packet with its
checksums; `unwrap` turns a wire sequence number into an offset. Layout constants come
from pilotif.packet.ip, the sums from pilotif.packet.checksum.
"""

import struct
from dataclasses import dataclass
from typing import Final

from pilotif.packet.checksum import ONES, pseudo_sum_le, sum_le
from pilotif.packet.ip import (
    IPV4_ADDRESS_BYTES,
    IPV4_CHECKSUM_OFFSET,
    IPV4_DESTINATION,
    IPV4_DONT_FRAGMENT,
    IPV4_FLAGS_FRAGMENT_OFFSET,
    IPV4_IHL_MASK,
    IPV4_MIN_HEADER_BYTES,
    IPV4_MIN_IHL_WORDS,
    IPV4_PLAIN_FIRST_BYTE,
    IPV4_PROTOCOL_OFFSET,
    IPV4_SOURCE,
    IPV4_TOTAL_LENGTH_OFFSET,
    IPV4_VERSION,
    IPV4_WORD_BYTES,
    IPV6_DESTINATION,
    IPV6_HEADER_BYTES,
    IPV6_NEXT_HEADER_OFFSET,
    IPV6_PAYLOAD_LENGTH_OFFSET,
    IPV6_SOURCE,
    IPV6_VERSION,
    PROTO_TCP,
    TCP_CHECKSUM_OFFSET,
    TCP_MIN_HEADER_BYTES,
    BytesLike,
)

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
TTL: Final = 64
"""The hop limit of the packets we send."""
_IPV4_MORE_FRAGMENTS_OR_OFFSET: Final = 0x3FFF
_IPV6_VERSION_WORD: Final = 0x60000000
_TCP_WORD_BYTES: Final = 4
_TCP = struct.Struct("!HHIIBBHHH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")
_U16_LE = struct.Struct("<H")
_U32_PAIR = struct.Struct("!II")


def unwrap(wire: int, base: int, near: int) -> int:
    """The offset from wire sequence number `base` of `wire`, taken as the one nearest
    to the offset `near`."""
    diff = (wire - base - near) % SEQ_SPACE
    return near + (diff - SEQ_SPACE if diff >= _HALF_SPACE else diff)


class SegmentDrop(ValueError):
    """A packet that is not a well-formed TCP segment for us; `reason` names the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    view = memoryview(packet)
    if not view:
        raise SegmentDrop("truncated")
    version = view[0] >> 4
    if version == IPV4_VERSION:
        if len(view) < IPV4_MIN_HEADER_BYTES:
            raise SegmentDrop("truncated")
        ihl = (view[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
        total = _U16.unpack_from(view, IPV4_TOTAL_LENGTH_OFFSET)[0]
        if ihl < IPV4_MIN_IHL_WORDS * IPV4_WORD_BYTES or not ihl <= total <= len(view):
            raise SegmentDrop("truncated")
        if checksums and sum_le(view[:ihl]) % ONES != 0:
            raise SegmentDrop("bad_checksum")
        if _U16.unpack_from(view, IPV4_FLAGS_FRAGMENT_OFFSET)[0] & _IPV4_MORE_FRAGMENTS_OR_OFFSET:
            raise SegmentDrop("fragment")
        if view[IPV4_PROTOCOL_OFFSET] != PROTO_TCP:
            raise SegmentDrop("not_tcp")
        source, destination = bytes(view[IPV4_SOURCE]), bytes(view[IPV4_DESTINATION])
        tcp = view[ihl:total]
    elif version == IPV6_VERSION:
        if len(view) < IPV6_HEADER_BYTES:
            raise SegmentDrop("truncated")
        total = IPV6_HEADER_BYTES + _U16.unpack_from(view, IPV6_PAYLOAD_LENGTH_OFFSET)[0]
        if total > len(view):
            raise SegmentDrop("truncated")
        if view[IPV6_NEXT_HEADER_OFFSET] != PROTO_TCP:
            raise SegmentDrop("not_tcp")
        source, destination = bytes(view[IPV6_SOURCE]), bytes(view[IPV6_DESTINATION])
        tcp = view[IPV6_HEADER_BYTES:total]
    else:
        raise SegmentDrop("not_ip")
    if len(tcp) < TCP_MIN_HEADER_BYTES:
        raise SegmentDrop("truncated")
    sport, dport, seq, ack, offset, flags, window, _checksum, _urgent = _TCP.unpack_from(tcp)
    header = (offset >> 4) * _TCP_WORD_BYTES
    if not TCP_MIN_HEADER_BYTES <= header <= len(tcp):
        raise SegmentDrop("truncated")
    if checksums and (
        (pseudo_sum_le(source + destination, PROTO_TCP, len(tcp)) + sum_le(tcp)) % ONES != 0
    ):
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
    tcp_len = header_len + len(payload)
    tcp_header = bytearray(
        _TCP.pack(ports[0], ports[1], seq, ack, (header_len // 4) << 4, flags, window, 0, 0)
    )
    tcp_header += options
    if tcp_checksum:
        total = (
            pseudo_sum_le(source + destination, PROTO_TCP, tcp_len)
            + sum_le(tcp_header)
            + sum_le(payload)
        ) % ONES
        _U16_LE.pack_into(tcp_header, TCP_CHECKSUM_OFFSET, ONES - total)
    if len(source) == IPV4_ADDRESS_BYTES:
        length = IPV4_MIN_HEADER_BYTES + tcp_len
        fields = (IPV4_PLAIN_FIRST_BYTE, 0, length, 0, IPV4_DONT_FRAGMENT, TTL, PROTO_TCP, 0)
        ip = bytearray(_IPV4.pack(*fields, source, destination))
        _U16_LE.pack_into(ip, IPV4_CHECKSUM_OFFSET, ONES - sum_le(ip))
    else:
        ip = bytearray(_IPV6.pack(_IPV6_VERSION_WORD, tcp_len, PROTO_TCP, TTL, source, destination))
    ip += tcp_header
    ip += payload
    return bytes(ip)
