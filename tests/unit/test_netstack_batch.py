"""The netstack with the data path's batches: a run of one connection's segments merged
into one (the device's native GRO, `coalesce`) is taken as one large segment and ACKed
once; authenticated packets skip the checksums but not the other checks; ACKs wait for
the delayed-ACK timer when a lone segment arrives."""

import pytest
from netstack_wire import Wire, open_pair, payload

from pilotif.netstack import StackConfig
from pilotif.netstack.segment import parse_segment
from pilotif.packet.ip import TCP_ACK
from pilotif.wg.fastpath.batch_loops import coalesce

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
