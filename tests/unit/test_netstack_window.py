"""The window a receiver advertises: with window scaling, the right edge the peer sees
(the ACK plus the window field shifted by our scale) never moves left, however the
segments it is sent cut the scale's granularity (RFC 7323 2.4, RFC 9293 3.8.6)."""

import itertools

from netstack_wire import Wire, open_pair, payload

from pilotif.netstack import StackConfig
from pilotif.netstack.segment import SEQ_SPACE, parse_segment
from pilotif.packet.ip import TCP_ACK

SCALED = StackConfig(receive_buffer_bytes=1024 * 1024)
"""A receiver whose window is scaled (shift 5: a granularity of 32 bytes)."""


def test_the_scaled_right_edge_never_moves_left_while_the_window_closes() -> None:
    wire = Wire(config_b=SCALED)
    client, server = open_pair(wire)
    shift = SCALED.receive_window_shift()
    assert shift > 0 and client.mss % (1 << shift)  # full segments cut the granularity
    edges: list[int] = []

    def watch(direction: str, packet: bytes) -> bool:
        segment = parse_segment(packet)
        if direction == "ba" and segment.flags & TCP_ACK:
            edges.append((segment.ack + (segment.window << shift)) % SEQ_SPACE)
        return True

    wire.tap = watch
    data = payload(2 * SCALED.receive_buffer_bytes, 3)
    sent = 0

    def write() -> None:
        nonlocal sent
        sent += client.send(data[sent:])

    wire.run(lambda: server.readable_bytes >= SCALED.receive_buffer_bytes - client.mss, app=write)
    wire.settle(2.0)  # the window is closed: the sender probes it
    first = edges[0]
    offsets = [(edge - first) % SEQ_SPACE for edge in edges]
    moved_left = [(a, b) for a, b in itertools.pairwise(offsets) if b < a]
    assert not moved_left, f"{len(moved_left)} of {len(offsets)} ACKs moved the edge left"
    received = server.receive()
    assert received == data[: len(received)]  # and what was taken is intact
