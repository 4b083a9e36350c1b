"""Cutting a super-packet (one TCP or UDP flow's segments with their headers once, as a
TUN with TSO or USO hands them over) into the packets it stands for: the plain
per-segment way, the one the native `seal_tso` (pilotif.wg.fastpath) does fused with
sealing, tested against each other.
"""

import struct
from dataclasses import dataclass
from typing import Final

from pilotif.packet.checksum import ONES, pseudo_sum_le, sum_le, swap16
from pilotif.packet.ip import (
    IPV4_ADDRESSES,
    IPV4_CHECKSUM_OFFSET,
    IPV4_ID_OFFSET,
    IPV4_IHL_MASK,
    IPV4_MIN_HEADER_BYTES,
    IPV4_TOTAL_LENGTH_OFFSET,
    IPV4_VERSION,
    IPV4_WORD_BYTES,
    IPV6_ADDRESSES,
    IPV6_HEADER_BYTES,
    IPV6_PAYLOAD_LENGTH_OFFSET,
    IPV6_VERSION,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CHECKSUM_OFFSET,
    TCP_CWR,
    TCP_DATA_OFFSET_OFFSET,
    TCP_FIN,
    TCP_FLAGS_OFFSET,
    TCP_MIN_HEADER_BYTES,
    TCP_PSH,
    TCP_SEQ_OFFSET,
    UDP_CHECKSUM_OFFSET,
    UDP_HEADER_BYTES,
    UDP_LENGTH_OFFSET,
)

MAX_GSO_SEGMENTS: Final = 128
"""The most segments one super-packet is cut into (64 KiB of 536-byte segments fits); the
native seal_tso has the same bound (MAX_SEGMENTS)."""
_SEQ_SPACE: Final = 2**32
_ID_SPACE: Final = 2**16
_TCP_WORD_BYTES: Final = 4
_U16: Final = struct.Struct("!H")
_U16_LE: Final = struct.Struct("<H")
_U32: Final = struct.Struct("!I")


class SegmentError(ValueError):
    """A super-packet's headers do not describe it (or it cuts into too many segments)."""


@dataclass(frozen=True, slots=True)
class SuperPacket:
    """One TCP (or UDP) flow's segments as a TUN with TSO (USO) reads them: the headers
    once, then the payload of every segment."""

    packet: memoryview
    """The IP packet (no virtio header)."""
    transport_start: int
    """Where the TCP (UDP) header starts."""
    segment_payload: int
    """Payload bytes per segment (the last one may carry fewer)."""
    udp: bool = False
    """Whether the segments are UDP datagrams (USO), not TCP segments."""


def cut_segments(
    packet: memoryview, transport_start: int, segment_payload: int, out: bytearray, *, udp: bool
) -> list[memoryview]:
    """The packets a TCP (or, with `udp`, UDP) super-packet stands for, each in its row
    of `out` (rows are the full segment's size, made even); the views point into `out`.

    Each segment gets its own IPv4 ID (one more a segment), total length and header
    checksum (IPv6: payload length), TCP sequence number (FIN and PSH only on the last,
    CWR only on the first) or UDP length, and a full transport checksum (never 0: a sum
    that is a multiple of 0xFFFF gives 0xFFFF, as UDP needs and TCP takes).
    Raises SegmentError for headers that do not describe the packet.
    """
    start = transport_start
    transport_min = UDP_HEADER_BYTES if udp else TCP_MIN_HEADER_BYTES
    if segment_payload <= 0:
        raise SegmentError(f"segment size {segment_payload}")
    if len(packet) <= start + transport_min or start < IPV4_MIN_HEADER_BYTES:
        raise SegmentError("super-packet shorter than its headers")
    version = packet[0] >> 4
    if version == IPV4_VERSION:
        addresses = packet[IPV4_ADDRESSES]
        ip_len = (packet[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
    elif version == IPV6_VERSION:
        addresses = packet[IPV6_ADDRESSES]
        ip_len = IPV6_HEADER_BYTES
    else:
        raise SegmentError(f"super-packet of IP version {version}")
    if udp:
        header_len = start + UDP_HEADER_BYTES
        protocol, checksum_at = PROTO_UDP, start + UDP_CHECKSUM_OFFSET
    else:
        header_len = start + (packet[start + TCP_DATA_OFFSET_OFFSET] >> 4) * _TCP_WORD_BYTES
        protocol, checksum_at = PROTO_TCP, start + TCP_CHECKSUM_OFFSET
        if header_len < start + TCP_MIN_HEADER_BYTES:
            raise SegmentError("TCP header shorter than its minimum")
    payload_len = len(packet) - header_len
    full, remainder = divmod(payload_len, segment_payload)
    count = full + (remainder > 0)
    if payload_len <= 0 or count > MAX_GSO_SEGMENTS:
        raise SegmentError(f"super-packet of {payload_len} bytes in {count} segments")
    full_size = header_len + segment_payload
    stride = full_size + full_size % 2
    if count * stride > len(out):
        raise SegmentError("split buffer too small")
    pseudo = pseudo_sum_le(addresses, protocol, 0)
    flags = 0 if udp else packet[start + TCP_FLAGS_OFFSET]
    first_seq = 0 if udp else _U32.unpack_from(packet, start + TCP_SEQ_OFFSET)[0]
    first_id = _U16.unpack_from(packet, IPV4_ID_OFFSET)[0] if version == IPV4_VERSION else 0
    view = memoryview(out)
    segments: list[memoryview] = []
    for row in range(count):
        at = row * stride
        last = row == count - 1
        size = header_len + (remainder if last and remainder else segment_payload)
        data_from = header_len + row * segment_payload
        out[at : at + header_len] = packet[:header_len]
        out[at + header_len : at + size] = packet[data_from : data_from + size - header_len]
        segment = view[at : at + size]
        _fix_ip_header(segment, version, ip_len, (first_id + row) % _ID_SPACE)
        if udp:
            _U16.pack_into(segment, start + UDP_LENGTH_OFFSET, size - start)
        else:
            seq = (first_seq + row * segment_payload) % _SEQ_SPACE
            _U32.pack_into(segment, start + TCP_SEQ_OFFSET, seq)
            segment_flags = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
            if row == 0:
                segment_flags |= flags & TCP_CWR
            if last:
                segment_flags |= flags & (TCP_FIN | TCP_PSH)
            segment[start + TCP_FLAGS_OFFSET] = segment_flags
        _U16.pack_into(segment, checksum_at, 0)
        total = (sum_le(segment[start:]) + pseudo + swap16(size - start)) % ONES
        _U16_LE.pack_into(segment, checksum_at, ONES - total)
        segments.append(segment)
    return segments


def _fix_ip_header(segment: memoryview, version: int, ip_len: int, identification: int) -> None:
    """A segment's own IPv4 total length, ID and header checksum (IPv6: payload length)."""
    if version == IPV6_VERSION:
        _U16.pack_into(segment, IPV6_PAYLOAD_LENGTH_OFFSET, len(segment) - IPV6_HEADER_BYTES)
        return
    _U16.pack_into(segment, IPV4_TOTAL_LENGTH_OFFSET, len(segment))
    _U16.pack_into(segment, IPV4_ID_OFFSET, identification)
    _U16.pack_into(segment, IPV4_CHECKSUM_OFFSET, 0)
    _U16_LE.pack_into(segment, IPV4_CHECKSUM_OFFSET, ONES - sum_le(segment[:ip_len]))
