"""TunBatch's writes and reads, on a datagram socket pair standing in for the TUN (one
message per read or write, as a TUN keeps packets apart): what the kernel gets for a
batch, for a lone packet, and when it refuses one."""

import os
import socket
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from pilotif.packet.segments import SuperPacket
from pilotif.tun.device import TunDevice
from pilotif.tun.offload import (
    GSO_TCPV4,
    GSO_UDP_L4,
    VIRTIO_NET_HDR_SIZE,
    TunBatch,
    TunOffloads,
    VirtioNetHdr,
)
from pilotif.wg.fastpath import _batch_loops  # type: ignore[attr-defined]

MSS = 1380
ZERO_HEADER = bytes(VIRTIO_NET_HDR_SIZE)


def segment(row: int, flags: str = "A") -> bytes:
    """Row `row` of one TCP flow: consecutive sequence numbers, MSS bytes each."""
    return bytes(
        IP(src="100.64.0.1", dst="100.64.0.2", flags="DF")
        / TCP(sport=40000, dport=5201, seq=row * MSS, ack=7, flags=flags)
        / Raw(os.urandom(MSS))
    )


@pytest.fixture
def tun() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(our end, the kernel's end) of a datagram socket pair."""
    ours, kernels = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    kernels.setblocking(False)
    yield ours, kernels
    ours.close()
    kernels.close()


def batch_on(end: socket.socket, *, vnet_hdr: bool) -> TunBatch:
    device = TunDevice("fake0", end.fileno(), vnet_hdr=vnet_hdr, multi_queue=False)
    return TunBatch(device, TunOffloads(vnet_hdr=vnet_hdr, tso=vnet_hdr, uso=False))


def received(end: socket.socket) -> list[bytes]:
    """Every message written so far."""
    messages = []
    while True:
        try:
            messages.append(end.recv(1 << 17))
        except BlockingIOError:
            return messages


def test_a_batch_of_one_flow_is_one_write_of_what_coalesce_makes(
    tun: tuple[socket.socket, socket.socket],
) -> None:
    ours, kernels = tun
    packets = [segment(row) for row in range(6)]

    assert batch_on(ours, vnet_hdr=True).write(packets) == 0

    (write,) = received(kernels)
    assert [write] == _batch_loops.coalesce(packets)
    assert VirtioNetHdr.unpack_from(write).gso_type == GSO_TCPV4


@pytest.mark.parametrize(
    "packet",
    [segment(0), bytes(IP(src="100.64.0.1", dst="100.64.0.2") / UDP() / Raw(b"one"))],
    ids=["tcp", "udp"],
)
def test_a_lone_packet_is_written_as_it_is_behind_an_empty_header(
    tun: tuple[socket.socket, socket.socket], packet: bytes
) -> None:
    ours, kernels = tun

    assert batch_on(ours, vnet_hdr=True).write([packet]) == 0

    assert received(kernels) == [ZERO_HEADER + packet]


def test_without_virtio_headers_each_packet_is_written_bare(
    tun: tuple[socket.socket, socket.socket],
) -> None:
    ours, kernels = tun
    packets = [segment(row) for row in range(3)]

    assert batch_on(ours, vnet_hdr=False).write(packets) == 0

    assert received(kernels) == packets


def test_writes_the_kernel_refuses_are_counted(tun: tuple[socket.socket, socket.socket]) -> None:
    ours, kernels = tun
    batch = batch_on(ours, vnet_hdr=True)
    kernels.close()

    assert batch.write([segment(0)]) == 1
    assert batch.write([segment(row) for row in range(4)]) == 1
    assert batch.write_merged([ZERO_HEADER + segment(0), ZERO_HEADER + segment(1)]) == 2


def test_reads_take_every_waiting_packet_up_to_the_limit(
    tun: tuple[socket.socket, socket.socket],
) -> None:
    ours, kernels = tun
    batch = batch_on(ours, vnet_hdr=True)
    packets = [segment(row, flags="PA") for row in range(5)]
    for packet in packets:
        kernels.send(ZERO_HEADER + packet)

    assert [bytes(p) for p in batch.read_batch(3)] == packets[:3]
    assert not batch.drained
    assert [bytes(p) for p in batch.read_batch(3)] == packets[3:]
    assert batch.drained
    assert batch.read_batch(3) == []


def test_a_super_packet_after_other_packets_comes_whole_from_the_next_read(
    tun: tuple[socket.socket, socket.socket],
) -> None:
    # Whole, the device seals it as it cuts it (natively); cut here, it would not be.
    ours, kernels = tun
    batch = batch_on(ours, vnet_hdr=True)
    plain = segment(0, flags="PA")
    whole = b"".join([segment(1)] + [segment(row)[40:] for row in range(2, 5)])
    header = VirtioNetHdr(0, GSO_TCPV4, 40, MSS, 20, 16)
    kernels.send(ZERO_HEADER + plain)
    kernels.send(header_bytes(header) + whole)

    assert [bytes(p) for p in batch.read_batch(8)] == [plain]
    assert not batch.drained
    read = batch.read_batch(8)
    assert isinstance(read, SuperPacket)
    assert (bytes(read.packet), read.transport_start, read.segment_payload) == (whole, 20, MSS)
    assert batch.read_batch(8) == []
    assert batch.drained


def test_a_udp_super_packet_comes_whole_too(tun: tuple[socket.socket, socket.socket]) -> None:
    # USO: a QUIC-like sender's glued datagrams go to the device whole, to be cut
    # as they are sealed.
    ours, kernels = tun
    batch = batch_on(ours, vnet_hdr=True)
    whole = bytes(
        IP(src="100.64.0.1", dst="100.64.0.2") / UDP(sport=4433, dport=443) / Raw(bytes(3000))
    )
    kernels.send(header_bytes(VirtioNetHdr(1, GSO_UDP_L4, 28, 1200, 20, 6)) + whole)

    read = batch.read_batch(8)

    assert isinstance(read, SuperPacket)
    assert (bytes(read.packet), read.transport_start, read.segment_payload, read.udp) == (
        whole,
        20,
        1200,
        True,
    )


def header_bytes(header: VirtioNetHdr) -> bytes:
    packed = bytearray(VIRTIO_NET_HDR_SIZE)
    header.pack_into(packed)
    return bytes(packed)
