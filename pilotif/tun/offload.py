"""TUN offloads: many TCP segments per read and per write instead of one packet each.

With IFF_VNET_HDR every packet on the TUN fd is preceded by a `virtio_net_hdr`. Once
TUNSETOFFLOAD grants TSO, the kernel hands us TCP "super-packets" of up to 64 KiB (one
read; with USO, UDP ones too) that the device cuts as it seals them, and we hand it
super-packets built natively from the in-order TCP segments of each connection in a
batch (`pilotif.wg.fastpath.batch_loops.coalesce`), so that one write carries many
segments (GRO). `TunBatch` wraps a TUN
device with both directions and falls back to one plain packet per read and write when
the kernel grants nothing.

Checksums are the Internet ones' complement sum, kept in pilotif.packet.checksum's
"little" domain.
"""

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pilotif.packet.checksum import ONES, sum_le
from pilotif.packet.ip import (
    BytesLike,
)
from pilotif.packet.segments import SegmentError, SuperPacket, cut_segments
from pilotif.tun.device import TunDevice
from pilotif.wg.fastpath.batch_loops import coalesce

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
READ_ARENA_BYTES: Final = 4 * MAX_IP_PACKET_BYTES
"""Room for the packets of one `TunBatch.read_batch` (a read needs a whole packet's room)."""

_VNET_HDR: Final = struct.Struct("=BBHHHH")
_ZERO_VNET_HDR: Final = bytes(VIRTIO_NET_HDR_SIZE)
_U16_LE: Final = struct.Struct("<H")


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


# -- the TUN in batches ------------------------------------------------------------------


class TunBatch:
    """Reads and writes on a TUN with whatever offloads it was granted.

    A `pilotif.tun.stack.LocalStack`: `read_batch()` returns the packets of several
    kernel reads, or a TCP or UDP super-packet whole (TSO, USO: the device seals it as it
    cuts it). They are views into buffers that the next read reuses: encrypt or copy them first.
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
        """The packets of up to `limit` reads, or a TCP or UDP super-packet alone as the
        kernel handed it over (TSO, USO: one read after other packets comes back from the
        next call);
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
                # A super-packet (or a partial checksum): one read first comes back
                # whole; a packet whose checksum the kernel left to us follows the
                # packets read before it, its checksum completed.
                found = VirtioNetHdr.unpack_from(header)
                gso_type = found.gso_type & ~_GSO_ECN
                if gso_type in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
                    whole = SuperPacket(
                        slot[:length], found.csum_start, found.gso_size, gso_type == GSO_UDP_L4
                    )
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
        """Hand `packets` to the kernel in as few writes as the offloads allow: with a
        virtio header and the native loops, each connection's run of next segments in
        one write (`pilotif.wg.fastpath.batch_loops.coalesce`); else one packet a write.

        Returns the number of writes the kernel refused (e.g. a full queue)."""
        if self.offloads.vnet_hdr and len(packets) > 1 and coalesce is not None:
            # No checksum check before merging: the tunnel's AEAD already proves these
            # bytes are what the peer sent; a checksum guards a wire we do not use.
            return self.write_merged(coalesce(packets))
        fd = self._fd
        failed = 0
        prefix = (_ZERO_VNET_HDR,) if self._header else ()
        for packet in packets:
            try:
                os.writev(fd, (*prefix, packet))
            except OSError:
                failed += 1
        return failed
