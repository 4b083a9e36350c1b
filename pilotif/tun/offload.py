"""TUN offloads: many TCP segments per read and per write instead of one packet each.

With IFF_VNET_HDR every packet on the TUN fd is preceded by a `virtio_net_hdr`. Once
TUNSETOFFLOAD grants TSO, the kernel hands us TCP "super-packets" of up to 64 KiB (one
read) that we split into MTU-sized segments before encryption (`split_gso`), and we hand
it super-packets built from the in-order TCP segments of one flow in a batch
(`coalesce`), so that one write carries many segments (GRO). `TunBatch` wraps a TUN
device with both directions and falls back to one plain packet per read and write when
the kernel grants nothing.

Checksums are the Internet ones' complement sum, kept in pilotif.packet.checksum's
"little" domain.
"""

import contextlib
import errno
import fcntl
import functools
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pilotif.packet.checksum import ONES, fold_le, pseudo_sum_le, sum_le
from pilotif.packet.ip import (
    IPV4_ADDRESSES,
    IPV4_CHECKSUM_OFFSET,
    IPV4_DONT_FRAGMENT,
    IPV4_FLAGS_FRAGMENT_OFFSET,
    IPV4_MIN_HEADER_BYTES,
    IPV4_PROTOCOL_OFFSET,
    IPV4_TOTAL_LENGTH_OFFSET,
    IPV4_TTL_OFFSET,
    IPV4_VERSION,
    IPV6_ADDRESSES,
    IPV6_HEADER_BYTES,
    IPV6_HOP_LIMIT_OFFSET,
    IPV6_NEXT_HEADER_OFFSET,
    IPV6_PAYLOAD_LENGTH_OFFSET,
    IPV6_VERSION,
    PROTO_TCP,
    TCP_ACK,
    TCP_ACK_OFFSET,
    TCP_CHECKSUM_OFFSET,
    TCP_DATA_OFFSET_OFFSET,
    TCP_FLAGS_OFFSET,
    TCP_MIN_HEADER_BYTES,
    TCP_PSH,
    TCP_SEQ_OFFSET,
    BytesLike,
)
from pilotif.packet.segments import SegmentError, SuperPacket, cut_segments
from pilotif.tun.device import TunDevice
from pilotif.wg.fastpath.batch_loops import coalesce_run

VIRTIO_NET_HDR_SIZE: Final = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 0x01
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
_GSO_ECN: Final = 0x80

TUN_F_CSUM: Final = 0x01
TUN_F_TSO4: Final = 0x02
TUN_F_TSO6: Final = 0x04
TUN_F_USO4: Final = 0x20
TUN_F_USO6: Final = 0x40
_TUNSETOFFLOAD: Final = 0x400454D0
_TUNSETVNETHDRSZ: Final = 0x400454D8

MAX_IP_PACKET_BYTES: Final = 65535
"""The largest packet a read returns or a coalesced write carries (IPv4 total length)."""
_WHOLE_BATCH_MIN_PACKETS: Final = 4
"""Below this many packets a write batch is coalesced packet by packet."""
READ_ARENA_BYTES: Final = 4 * MAX_IP_PACKET_BYTES
"""Room for the packets of one `TunBatch.read_batch` (a read needs a whole packet's room)."""

_VNET_HDR: Final = struct.Struct("=BBHHHH")
_ZERO_VNET_HDR: Final = bytes(VIRTIO_NET_HDR_SIZE)
_BYTE_SWAP_FACTOR: Final = 256
"""256 * x mod 0xFFFF swaps the bytes of a 16-bit ones' complement sum x."""
_SEQ_SPACE: Final = 2**32
_U16: Final = struct.Struct("!H")
_U16_LE: Final = struct.Struct("<H")
_U32: Final = struct.Struct("!I")
_U16_PAIR: Final = struct.Struct("!HH")


class OffloadError(Exception):
    """A super-packet from the kernel cannot be split (malformed header or too big)."""


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """The virtio_net_hdr before each packet on a TUN opened with IFF_VNET_HDR."""

    flags: int = 0
    """VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum at csum_start + csum_offset is partial."""
    gso_type: int = GSO_NONE
    """GSO_NONE, GSO_TCPV4, GSO_TCPV6 or GSO_UDP_L4 (plus 0x80 for ECN)."""
    hdr_len: int = 0
    """Bytes of IP and transport headers repeated in front of each segment."""
    gso_size: int = 0
    """Payload bytes per segment (the last one may be shorter)."""
    csum_start: int = 0
    """Offset of the transport header."""
    csum_offset: int = 0
    """Offset of the checksum field inside the transport header."""

    @classmethod
    def unpack_from(cls, buffer: BytesLike, offset: int = 0) -> "VirtioNetHdr":
        return cls(*_VNET_HDR.unpack_from(buffer, offset))

    def pack_into(self, buffer: bytearray | memoryview, offset: int = 0) -> None:
        _VNET_HDR.pack_into(
            buffer,
            offset,
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )


# -- TUN offload negotiation -----------------------------------------------------------


@dataclass(frozen=True)
class TunOffloads:
    """What the kernel granted on one TUN fd; `status()` is what `pilotif status` shows."""

    vnet_hdr: bool
    tso: bool
    """TCP segmentation (TSO4 and TSO6): reads carry super-packets, writes may too."""
    uso: bool
    """UDP segmentation (USO4 and USO6): reads may carry UDP super-packets."""
    refused: tuple[str, ...] = ()
    """What the kernel refused, and why."""

    def status(self) -> dict[str, Any]:
        return {
            "vnet_hdr": self.vnet_hdr,
            "coalesced_writes": self.vnet_hdr,
            "tso": self.tso,
            "uso": self.uso,
            "refused": list(self.refused),
        }


def enable_offloads(tun: TunDevice, *, tso: bool = True, uso: bool = True) -> TunOffloads:
    """Set up the virtio header on `tun`, and with `tso` ask for checksum, TSO and (with
    `uso`) USO offloads on reads.

    Coalesced writes (GRO) need only the virtio header, so they are on whenever it is.
    TSO reads are on by default: one read of a 64 KiB super-packet, sealed as it is cut
    (natively), costs less than dozens of one-packet reads (docs/BENCHMARKS.md).
    Needs a TUN opened with `vnet_hdr=True`; without it nothing is enabled. Each refusal
    falls back to less (TSO without USO, then nothing) and is recorded.
    """
    if not tun.vnet_hdr:
        return TunOffloads(vnet_hdr=False, tso=False, uso=False, refused=("vnet_hdr: off",))
    refused: list[str] = []
    fcntl.ioctl(tun.fileno(), _TUNSETVNETHDRSZ, struct.pack("i", VIRTIO_NET_HDR_SIZE))
    if not tso:
        fcntl.ioctl(tun.fileno(), _TUNSETOFFLOAD, 0)
        return TunOffloads(vnet_hdr=True, tso=False, uso=False)
    tso_flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    attempts = [("tso+uso", tso_flags | TUN_F_USO4 | TUN_F_USO6)] if uso else []
    attempts.append(("tso", tso_flags))
    for name, flags in attempts:
        try:
            fcntl.ioctl(tun.fileno(), _TUNSETOFFLOAD, flags)
        except OSError as error:
            refused.append(f"{name}: {errno.errorcode.get(error.errno or 0, error.strerror)}")
            continue
        return TunOffloads(vnet_hdr=True, tso=True, uso=name == "tso+uso", refused=tuple(refused))
    with contextlib.suppress(OSError):
        fcntl.ioctl(tun.fileno(), _TUNSETOFFLOAD, 0)
    return TunOffloads(vnet_hdr=True, tso=False, uso=False, refused=tuple(refused))


# -- splitting what the kernel read (GSO) ------------------------------------------------


def split_gso(packet: memoryview, header: VirtioNetHdr, out: bytearray) -> list[memoryview]:
    """Split a super-packet into complete packets, one per row of `out`
    (pilotif.packet.segments.cut_segments; the views point into `out`).

    `packet` is what follows the virtio header. A packet without GSO comes back as it
    is, its checksum completed when the kernel left it partial (then `packet` must be
    writable). Raises OffloadError for a header that does not describe the packet.
    """
    gso_type = header.gso_type & ~_GSO_ECN
    if gso_type == GSO_NONE:
        if header.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            _complete_checksum(packet, header.csum_start, header.csum_offset)
        return [packet]
    if gso_type not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise OffloadError(f"unsupported GSO type {header.gso_type} size {header.gso_size}")
    try:
        return cut_segments(
            packet, header.csum_start, header.gso_size, out, udp=gso_type == GSO_UDP_L4
        )
    except SegmentError as error:
        raise OffloadError(str(error)) from error


def _complete_checksum(packet: memoryview, start: int, checksum_offset: int) -> None:
    """Turn a partial checksum (the pseudo-header sum the kernel left) into a full one."""
    at = start + checksum_offset
    if at + 2 > len(packet):
        raise OffloadError("checksum offset beyond the packet")
    checksum = -sum_le(packet[start:]) % ONES
    _U16_LE.pack_into(packet, at, checksum)


# -- coalescing what we write (GRO) -----------------------------------------------------


@functools.cache
def _header_mask(ip_len: int, header_len: int) -> int:
    """Ones over the header bytes that every segment of one super-packet shares.

    Zeros over what differs from segment to segment: the IPv4 total length, ID and
    header checksum (IPv6: payload length), the TCP sequence number, PSH and checksum.
    """
    mask = bytearray(b"\xff" * header_len)
    varying = [(IPV4_TOTAL_LENGTH_OFFSET, 4), (IPV4_CHECKSUM_OFFSET, 2)]
    if ip_len == IPV6_HEADER_BYTES:
        varying = [(IPV6_PAYLOAD_LENGTH_OFFSET, 2)]
    varying += [(ip_len + TCP_SEQ_OFFSET, 4), (ip_len + TCP_CHECKSUM_OFFSET, 2)]
    for start, size in varying:
        mask[start : start + size] = bytes(size)
    mask[ip_len + TCP_FLAGS_OFFSET] &= ~TCP_PSH
    return int.from_bytes(mask, "big")


class _Flow:
    """A super-packet being built: the first segment's headers, then every payload.

    A segment continues it when its headers, read as one big-endian integer, equal the
    first segment's wherever `_header_mask` has ones and its sequence number is the
    next one: one integer comparison per segment instead of a field-by-field parse.
    """

    __slots__ = (
        "buffer",
        "closed",
        "first",
        "gso_size",
        "header_len",
        "ip_len",
        "length_base",
        "length_shift",
        "mask",
        "next_seq",
        "psh_shift",
        "segments",
        "seq_shift",
        "template",
    )

    def __init__(self, packet: BytesLike, ip_len: int, header_len: int, seq: int, psh: bool):
        payload = len(packet) - header_len
        self.buffer = bytearray(_ZERO_VNET_HDR + packet)
        self.first = packet
        self.ip_len = ip_len
        self.header_len = header_len
        self.gso_size = payload
        self.next_seq = (seq + payload) % _SEQ_SPACE
        self.segments = 1
        self.closed = psh
        """A PSH or a short segment ends the super-packet."""
        self.template = int.from_bytes(packet[:header_len], "big")
        self.mask = _header_mask(ip_len, header_len)
        self.seq_shift = (header_len - ip_len - TCP_SEQ_OFFSET - 4) * 8
        self.psh_shift = (header_len - ip_len - TCP_FLAGS_OFFSET - 1) * 8 + TCP_PSH.bit_length() - 1
        if ip_len == IPV6_HEADER_BYTES:
            self.length_shift = (header_len - IPV6_PAYLOAD_LENGTH_OFFSET - 2) * 8
            self.length_base = IPV6_HEADER_BYTES
        else:
            self.length_shift = (header_len - IPV4_TOTAL_LENGTH_OFFSET - 2) * 8
            self.length_base = 0

    def extend(self, packet: BytesLike, verify: bool) -> bool:
        """Append `packet` if it is this flow's next segment; whether it was."""
        if self.closed:
            return False
        header_len = self.header_len
        payload = len(packet) - header_len
        if (
            payload <= 0
            or payload > self.gso_size
            or len(self.buffer) + payload > VIRTIO_NET_HDR_SIZE + MAX_IP_PACKET_BYTES
        ):
            return False
        word = int.from_bytes(packet[:header_len], "big")
        if (
            (word ^ self.template) & self.mask
            or (word >> self.seq_shift) & 0xFFFFFFFF != self.next_seq
            or (word >> self.length_shift) & 0xFFFF != len(packet) - self.length_base
        ):
            return False
        if verify and not _tcp_checksum_ok(packet, self.ip_len):
            return False
        if verify and self.segments == 1 and not _tcp_checksum_ok(self.first, self.ip_len):
            self.closed = True
            return False
        self.buffer += packet[header_len:]
        self.segments += 1
        self.next_seq = (self.next_seq + payload) % _SEQ_SPACE
        psh = (word >> self.psh_shift) & 1
        if psh:
            self.buffer[VIRTIO_NET_HDR_SIZE + self.ip_len + TCP_FLAGS_OFFSET] |= TCP_PSH
        self.closed = bool(psh) or payload < self.gso_size
        return True


def coalesce(packets: Sequence[BytesLike], *, verify: bool = True) -> list[BytesLike]:
    """The writes that carry `packets` to a TUN with TSO granted: each with its header.

    In-order TCP segments of one flow (same addresses, ports, ACK, TCP options, TOS/TTL)
    become one super-packet with a GSO virtio header; every other packet is written as
    it is behind a zero header. Writes keep the order of each flow's first packet.
    With `verify`, a segment whose checksum is wrong is not merged (the kernel would
    not check a merged one again).
    """
    if not verify and len(packets) >= _WHOLE_BATCH_MIN_PACKETS and coalesce_run is not None:
        write = coalesce_run(packets)
        if write is not None:
            return [write]
    return _coalesce_flows(packets, verify)


def _coalesce_flows(packets: Sequence[BytesLike], verify: bool) -> list[BytesLike]:
    """`coalesce` packet by packet, each flow's segments merged as they come."""
    writes: list[BytesLike | _Flow] = []
    flows: dict[bytes, _Flow] = {}
    last: _Flow | None = None
    for packet in packets:
        if last is not None and last.extend(packet, verify):
            continue
        candidate = _tcp_candidate(packet)
        if candidate is None:
            writes.append(_ZERO_VNET_HDR + packet)
            continue
        key, ip_len, header_len, seq, psh = candidate
        flow = flows.get(key)
        if flow is not None and flow is not last and flow.extend(packet, verify):
            last = flow
            continue
        last = flows[key] = _Flow(packet, ip_len, header_len, seq, psh)
        writes.append(last)
    return [_finish(w) if isinstance(w, _Flow) else w for w in writes]


def _tcp_candidate(packet: BytesLike) -> tuple[bytes, int, int, int, bool] | None:
    """(flow key, IP header length, all headers' length, seq, PSH) of a mergeable segment."""
    if len(packet) < IPV4_MIN_HEADER_BYTES + TCP_MIN_HEADER_BYTES:
        return None
    version = packet[0] >> 4
    if version == IPV4_VERSION:
        ip_len = (packet[0] & 0x0F) * 4
        if (
            ip_len != IPV4_MIN_HEADER_BYTES
            or packet[IPV4_PROTOCOL_OFFSET] != PROTO_TCP
            or _U16.unpack_from(packet, IPV4_TOTAL_LENGTH_OFFSET)[0] != len(packet)
            or _U16.unpack_from(packet, IPV4_FLAGS_FRAGMENT_OFFSET)[0] & ~IPV4_DONT_FRAGMENT
        ):
            return None
        ip_key = (
            bytes(packet[1:2])
            + bytes(packet[IPV4_TTL_OFFSET : IPV4_TTL_OFFSET + 1])
            + bytes(packet[IPV4_FLAGS_FRAGMENT_OFFSET : IPV4_FLAGS_FRAGMENT_OFFSET + 1])
        )
        addresses = bytes(packet[IPV4_ADDRESSES])
    elif version == IPV6_VERSION:
        ip_len = IPV6_HEADER_BYTES
        if (
            len(packet) < IPV6_HEADER_BYTES + TCP_MIN_HEADER_BYTES
            or packet[IPV6_NEXT_HEADER_OFFSET] != PROTO_TCP
            or _U16.unpack_from(packet, IPV6_PAYLOAD_LENGTH_OFFSET)[0] + ip_len != len(packet)
        ):
            return None
        ip_key = bytes(packet[0:2]) + bytes(
            packet[IPV6_HOP_LIMIT_OFFSET : IPV6_HOP_LIMIT_OFFSET + 1]
        )
        addresses = bytes(packet[IPV6_ADDRESSES])
    else:
        return None
    header_len = ip_len + (packet[ip_len + TCP_DATA_OFFSET_OFFSET] >> 4) * 4
    flags = packet[ip_len + TCP_FLAGS_OFFSET]
    if (
        header_len - ip_len < TCP_MIN_HEADER_BYTES
        or header_len >= len(packet)
        or flags & ~TCP_PSH != TCP_ACK
    ):
        return None
    key = (
        ip_key
        + addresses
        + bytes(packet[ip_len : ip_len + TCP_SEQ_OFFSET])
        + bytes(packet[ip_len + TCP_ACK_OFFSET : ip_len + TCP_DATA_OFFSET_OFFSET])
        + bytes(packet[ip_len + TCP_MIN_HEADER_BYTES : header_len])
    )
    seq = _U32.unpack_from(packet, ip_len + TCP_SEQ_OFFSET)[0]
    return key, ip_len, header_len, seq, bool(flags & TCP_PSH)


def _tcp_checksum_ok(packet: BytesLike, ip_len: int) -> bool:
    addresses = (
        packet[IPV4_ADDRESSES] if ip_len == IPV4_MIN_HEADER_BYTES else packet[IPV6_ADDRESSES]
    )
    total = pseudo_sum_le(addresses, PROTO_TCP, len(packet) - ip_len) + sum_le(packet[ip_len:])
    return total % ONES == 0


def _finish(flow: _Flow) -> BytesLike:
    """The write for a flow: the original segment, or the super-packet with its header."""
    if flow.segments == 1:
        return flow.buffer
    buffer = flow.buffer
    packet = memoryview(buffer)[VIRTIO_NET_HDR_SIZE:]
    ip_len = flow.ip_len
    size = len(packet)
    if ip_len == IPV4_MIN_HEADER_BYTES:
        gso_type = GSO_TCPV4
        _U16.pack_into(packet, IPV4_TOTAL_LENGTH_OFFSET, size)
        packet[IPV4_CHECKSUM_OFFSET] = packet[IPV4_CHECKSUM_OFFSET + 1] = 0
        _U16_LE.pack_into(packet, IPV4_CHECKSUM_OFFSET, -sum_le(packet[:ip_len]) % ONES)
        addresses = packet[IPV4_ADDRESSES]
    else:
        gso_type = GSO_TCPV6
        _U16.pack_into(packet, IPV6_PAYLOAD_LENGTH_OFFSET, size - ip_len)
        addresses = packet[IPV6_ADDRESSES]
    partial = fold_le(pseudo_sum_le(addresses, PROTO_TCP, size - ip_len))
    _U16_LE.pack_into(packet, ip_len + TCP_CHECKSUM_OFFSET, partial)
    VirtioNetHdr(
        flags=VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type=gso_type,
        hdr_len=flow.header_len,
        gso_size=flow.gso_size,
        csum_start=ip_len,
        csum_offset=TCP_CHECKSUM_OFFSET,
    ).pack_into(buffer)
    packet.release()
    return buffer


# -- the TUN in batches ------------------------------------------------------------------


class TunBatch:
    """Reads and writes on a TUN with whatever offloads it was granted.

    A `pilotif.tun.stack.LocalStack`: `read_batch()` returns the packets of several
    kernel reads, or a TCP super-packet whole (TSO: the device seals it as it cuts it).
    They are views into buffers that the next read reuses: encrypt or copy them first.
    """

    def __init__(self, tun: TunDevice, offloads: TunOffloads) -> None:
        self.tun = tun
        self.offloads = offloads
        self._fd = tun.fileno()
        self._header = bytearray(VIRTIO_NET_HDR_SIZE if offloads.vnet_hdr else 0)
        self._arena = bytearray(READ_ARENA_BYTES)
        self._arena_view = memoryview(self._arena)
        self._split_buffer = bytearray(2 * MAX_IP_PACKET_BYTES)
        self.split_errors = 0
        """Super-packets dropped because their header did not describe them."""
        self.drained = False
        self._pending: SuperPacket | None = None
        """A TCP super-packet read after other packets: the next read's (it goes to the
        device whole, to be sealed as it is cut)."""

    def read_batch(self, limit: int) -> list[memoryview] | SuperPacket:
        """The packets of up to `limit` reads, or a TCP super-packet alone as the kernel
        handed it over (TSO: one read after other packets comes back from the next call);
        empty when nothing waits. Afterwards `drained` says whether the last read found
        the queue empty (no need to call again before the fd is readable)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.drained = False
            return pending
        fd = self._fd
        header = self._header
        arena = self._arena_view
        packets: list[memoryview] = []
        offset = 0
        self.drained = False
        while len(packets) < limit and len(arena) - offset >= MAX_IP_PACKET_BYTES:
            slot = arena[offset:]
            try:
                length = os.readv(fd, (header, slot) if header else (slot,)) - len(header)
            except (BlockingIOError, InterruptedError):
                self.drained = True
                break
            if length <= 0:
                break
            if self.offloads.tso and (header[0] or header[1]):
                # A super-packet (or a partial checksum): a TCP one read first comes
                # back whole; otherwise its segments follow the packets read before it.
                found = VirtioNetHdr.unpack_from(header)
                if found.gso_type & ~_GSO_ECN in (GSO_TCPV4, GSO_TCPV6):
                    whole = SuperPacket(slot[:length], found.csum_start, found.gso_size)
                    if not packets:
                        return whole
                    self._pending = whole
                    return packets
                return packets + self._split(slot[:length], found)
            packets.append(slot[:length])
            offset += length
        return packets

    @property
    def merges_writes(self) -> bool:
        """Whether `write_merged` takes writes with a virtio header (GRO on the TUN)."""
        return self.offloads.vnet_hdr

    def fileno(self) -> int:
        """The TUN's fd: readable when packets wait."""
        return self._fd

    def _split(self, packet: memoryview, header: VirtioNetHdr) -> list[memoryview]:
        """A super-packet's segments (or the packet, its checksum completed), in the split
        buffer until the next split; none when its header does not describe it
        (counted in `split_errors`)."""
        try:
            return split_gso(packet, header, self._split_buffer)
        except OffloadError:
            self.split_errors += 1
            return []

    def write_merged(self, writes: Sequence[BytesLike]) -> int:
        """Hand the kernel writes that already carry their virtio header (a TUN with
        `vnet_hdr` only); the number it refused."""
        fd = self._fd
        failed = 0
        for write in writes:
            try:
                os.write(fd, write)
            except OSError:
                failed += 1
        return failed

    def write(self, packets: Sequence[BytesLike]) -> int:
        """Hand `packets` to the kernel in as few writes as the offloads allow.

        Returns the number of writes the kernel refused (e.g. a full queue)."""
        if self.offloads.vnet_hdr and len(packets) > 1:
            # No checksum check before merging: the tunnel's AEAD already proves these
            # bytes are what the peer sent; a checksum guards a wire we do not use.
            return self.write_merged(coalesce(packets, verify=False))
        fd = self._fd
        failed = 0
        prefix = (_ZERO_VNET_HDR,) if self._header else ()
        for packet in packets:
            try:
                os.writev(fd, (*prefix, packet))
            except OSError:
                failed += 1
        return failed
