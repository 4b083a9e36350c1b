"""Batch sealing speaks the same protocol as the Device: its datagrams decrypt there."""

import os

from conftest import MTU, NOW, Node, peer_of

from pilotif.fastpath import open_into, padded_length, seal_batch


def seal_from(a: Node, b: Node, packets: list[bytes]) -> list[bytes]:
    keypair = peer_of(a, b).current
    assert keypair is not None
    out = bytearray(len(packets) * (MTU + 32))
    datagrams = seal_batch(
        keypair.send_aead,
        keypair.remote_index,
        keypair.send_counter,
        packets,
        MTU,
        out,
        bytearray(MTU),
    )
    keypair.send_counter += len(packets)
    return [bytes(d) for d in datagrams]


def test_sealed_batch_is_received_by_the_peer_device(established: tuple[Node, Node]) -> None:
    a, b = established
    packets = [a.packet_to(b, os.urandom(n)) for n in (1392, 1392, 700, 0)]
    for datagram in seal_from(a, b, packets):
        b.device.receive_datagram(datagram, a.endpoint, NOW)
    assert b.device.to_tun == packets
    assert not any(b.device.drops.values())


def test_sealed_batch_is_byte_identical_to_one_at_a_time(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    packets = [a.packet_to(b, os.urandom(n)) for n in (1392, 33, 1000)]
    counter = peer_of(a, b).current.send_counter  # type: ignore[union-attr]
    batch = seal_from(a, b, packets)
    peer_of(a, b).current.send_counter = counter  # type: ignore[union-attr]
    for packet in packets:
        a.device.send_packet(packet, NOW)
    assert batch == [d for d, _ in a.device.outgoing]


def test_full_segments_seal_to_equal_sizes_for_gso(established: tuple[Node, Node]) -> None:
    a, b = established
    packets = [a.packet_to(b, bytes(1392))] * 5 + [a.packet_to(b, bytes(200))]
    sizes = [len(d) for d in seal_from(a, b, packets)]
    assert sizes[:5] == [MTU + 32] * 5
    assert sizes[5] < sizes[0]


def test_open_into_rejects_a_forgery(established: tuple[Node, Node]) -> None:
    a, b = established
    counter = peer_of(a, b).current.send_counter  # type: ignore[union-attr]
    (datagram,) = seal_from(a, b, [a.packet_to(b, b"x" * 64)])
    receive = peer_of(b, a).current.receive_aead  # type: ignore[union-attr]
    out = memoryview(bytearray(MTU))
    assert open_into(receive, counter, datagram, out) == padded_length(92, MTU)
    forged = bytearray(datagram)
    forged[-1] ^= 1
    assert open_into(receive, counter, forged, out) == -1


def test_padding_stops_at_the_mtu() -> None:
    assert padded_length(0, MTU) == 0
    assert padded_length(1, MTU) == 16
    assert padded_length(MTU - 2, MTU) == MTU
    assert padded_length(MTU, MTU) == MTU
