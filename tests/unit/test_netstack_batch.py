"""The netstack with the data path's batches: a run of one connection's segments merged
into one (the device's native GRO, `coalesce`) is taken as one large segment and ACKed
once; authenticated packets skip the checksums but not the other checks; ACKs wait for
the delayed-ACK timer when a lone segment arrives. Out, with `large_segments`, a run of
full segments leaves as one large segment (a SuperPacket) that cuts into the segments
the peer takes, checksums and all, as much as the window sends in a millisecond (a slow
path gets smaller ones); lost ones are sent again one by one."""

import hashlib

import pytest
from netstack_wire import MAX_IP_PACKET_BYTES, Link, Wire, open_pair, payload, transfer

from pilotif.netstack import StackConfig
from pilotif.netstack.segment import parse_segment
from pilotif.packet.ip import TCP_ACK, TCP_MIN_HEADER_BYTES, TCP_PSH
from pilotif.packet.segments import SuperPacket, cut_segments
from pilotif.wg.fastpath.batch_loops import coalesce

LARGE = StackConfig(large_segments=True)
FAST = Link(delay_s=0.0001)
"""A path whose window sends 64 KiB within a millisecond (large segments at their
largest)."""

VIRTIO_HEADER_BYTES = 10


def _held_back(wire: Wire) -> list[bytes]:
    """A list that collects (and drops) every data segment from A to B from now on."""
    held: list[bytes] = []

    def tap(direction: str, packet: bytes) -> bool:
        if direction == "ab" and parse_segment(packet).payload:
            held.append(packet)
            return False
        return True

    wire.tap = tap
    return held


@pytest.mark.skipif(coalesce is None, reason="needs the native batch loops")
def test_a_merged_run_of_segments_is_taken_whole_and_acked_once() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    held = _held_back(wire)
    data = payload(8 * client.mss, seed=3)
    client.send(data)
    wire.settle(0.001)  # the initial window: all eight go out
    assert len(held) == 8
    assert coalesce is not None
    writes = coalesce(held)
    assert len(writes) == 1, "the segments are one run"
    merged = memoryview(writes[0])[VIRTIO_HEADER_BYTES:]
    wire.b.receive(merged, wire.now, authenticated=True)
    answers = [parse_segment(p) for p in wire.b.poll(wire.now)]
    assert server.receive() == data
    assert len(answers) == 1, "one ACK at once for the whole run"
    assert answers[0].flags & TCP_ACK
    assert (answers[0].ack - client.mss * 8) % 2**32 == parse_segment(held[0]).seq


@pytest.mark.skipif(coalesce is None, reason="needs the native batch loops")
def test_a_merged_run_with_its_partial_checksum_is_refused_unless_authenticated() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    held = _held_back(wire)
    client.send(payload(4 * client.mss, seed=4))
    wire.settle(0.001)
    assert coalesce is not None
    merged = memoryview(coalesce(held)[0])[VIRTIO_HEADER_BYTES:]
    wire.b.receive(merged, wire.now)
    assert wire.b.counters["bad_checksum"] == 1
    assert server.readable_bytes == 0


def test_authenticated_garbage_is_still_dropped_and_counted() -> None:
    wire = Wire()
    client, _ = open_pair(wire)
    client.send(b"x" * 100)
    held = _held_back(wire)
    wire.settle(0.001)
    good = held[0]
    for bad, reason in (
        (good[:30], "truncated"),
        (b"\x45" + good[1:9] + b"\x11" + good[10:], "not_tcp"),
        (b"\x00" * 60, "not_ip"),
    ):
        wire.b.receive(bad, wire.now, authenticated=True)
        assert wire.b.counters[reason] >= 1, reason


def test_a_lone_segment_is_acked_by_the_delayed_ack_timer() -> None:
    config = StackConfig(delayed_ack_s=0.04)
    wire = Wire(config_a=config, config_b=config)
    client, server = open_pair(wire)
    wire.settle(0.2)
    client.send(b"y" * client.mss)
    acks: list[float] = []

    def tap(direction: str, packet: bytes) -> bool:
        if direction == "ba" and not parse_segment(packet).payload:
            acks.append(wire.now)
        return True

    wire.tap = tap
    sent_at = wire.now
    wire.settle(0.2)
    assert server.receive() == b"y" * client.mss
    assert len(acks) == 1
    delay = acks[0] - sent_at - wire.link.delay_s
    assert config.delayed_ack_s * 0.99 <= delay <= config.delayed_ack_s * 1.01


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_run_of_full_segments_leaves_as_one_large_segment_cut_correctly(ipv6: bool) -> None:
    wire = Wire(link=FAST, config_a=LARGE)
    client, server = open_pair(wire, ipv6=ipv6)
    data = payload(10 * client.mss, seed=5)
    client.send(data)
    out = wire.a.poll(wire.now)
    assert len(out) == 1 and isinstance(out[0], SuperPacket), "the initial window at once"
    large = out[0]
    assert large.segment_payload == client.mss
    cut = cut_segments(
        large.packet, large.transport_start, large.segment_payload, bytearray(2**17), udp=False
    )
    segments = [parse_segment(bytes(packet)) for packet in cut]
    assert [len(s.payload) for s in segments] == [client.mss] * 10
    first = segments[0].seq
    assert [(s.seq - first) % 2**32 for s in segments] == [i * client.mss for i in range(10)]
    assert [bool(s.flags & TCP_PSH) for s in segments] == [False] * 9 + [True]
    for packet in cut:  # checked as any packet from the wire: checksums too
        wire.b.receive(bytes(packet), wire.now)
    assert wire.b.counters["bad_checksum"] == 0
    assert server.receive() == data


def test_a_large_segment_stays_within_an_ip_packet_and_the_segments_seal_tso_cuts() -> None:
    wire = Wire(link=FAST, config_a=StackConfig(large_segments=True, send_buffer_bytes=8 << 20))
    client, server = open_pair(wire)
    data = payload(6_000_000, seed=6)
    assert transfer(wire, client, server, data) == data
    sizes = [len(large.packet) for large in wire.large["ab"]]
    assert max(sizes) <= MAX_IP_PACKET_BYTES
    assert max(sizes) > MAX_IP_PACKET_BYTES - 2 * client.mss, "as large as one can be"


@pytest.mark.parametrize("ipv6", [False, True])
def test_large_segments_carry_a_transfer_through_loss_and_reordering(ipv6: bool) -> None:
    link = Link(delay_s=0.02, loss=0.01, duplicate=0.01, reorder=0.03, rate_bytes_per_s=20e6)
    wire = Wire(link=link, config_a=LARGE, config_b=LARGE, seed=11)
    client, server = open_pair(wire, ipv6=ipv6)
    up, down = payload(2_000_000, 7), payload(2_000_000, 8)
    got = transfer(wire, client, server, up)
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
    assert transfer(wire, server, client, down) == down
    assert wire.large["ab"] and wire.large["ba"]
    assert client.retransmissions > 0 and server.retransmissions > 0


def test_over_a_slow_path_a_large_segment_carries_a_millisecond_of_the_window() -> None:
    wire = Wire(link=Link(delay_s=0.05), config_a=LARGE)
    client, _ = open_pair(wire)
    client.send(payload(10 * client.mss, seed=12))
    out = wire.a.poll(wire.now)
    # 10 segments a round trip of 100 ms: a millisecond is less than one, two at least.
    assert [len(large.packet) - large.transport_start for large in out] == [
        TCP_MIN_HEADER_BYTES + 2 * client.mss
    ] * 5


def test_less_than_two_full_segments_leave_as_plain_segments() -> None:
    wire = Wire(config_a=LARGE)
    client, _ = open_pair(wire)
    client.send(payload(client.mss + 100, seed=9))
    out = wire.a.poll(wire.now)
    assert len(out) == 2 and not any(isinstance(p, SuperPacket) for p in out)
