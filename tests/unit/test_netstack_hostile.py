"""Hostile input to the userspace stack: garbage, truncated packets, bad checksums,
other protocols and addresses are dropped and counted; any sequence of well-formed but
hostile segments (flags, sequence and acknowledgement numbers, options, lengths) raises
nothing and leaves a connection's memory within its caps. ICMP echo is answered."""

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netstack_wire import A_V4, A_V6, B_V4, B_V6, Wire, next_numbers, open_pair, payload, transfer

from pilotif.netstack import Connection, StackConfig
from pilotif.netstack.segment import build_segment, parse_segment
from pilotif.packet.checksum import ONES, pseudo_sum_le, sum_le
from pilotif.packet.icmp import echo_request_packet
from pilotif.packet.ip import (
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMPV6,
    TCP_ACK,
    is_echo_reply,
)


def _valid(wire: Wire) -> tuple[Connection, bytes]:
    client, server = open_pair(wire)
    seq, ack = next_numbers(wire, "ab")
    ports = (client.local[1], client.remote[1])
    return server, build_segment(
        A_V4.packed, B_V4.packed, ports, seq, ack, TCP_ACK, 1000, b"", b"hi"
    )


def test_garbage_truncated_and_bad_checksums_are_dropped_and_counted() -> None:
    wire = Wire()
    server, good = _valid(wire)
    rng = random.Random(5)
    for _ in range(200):
        wire.b.receive(rng.randbytes(rng.randrange(0, 120)), wire.now)
    for cut in range(0, len(good) - 1):
        wire.b.receive(good[:cut], wire.now)
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    wire.b.receive(bytes(flipped), wire.now)
    header = bytearray(good)
    header[8] ^= 1  # the TTL: the IPv4 header's checksum no longer holds
    wire.b.receive(bytes(header), wire.now)
    counters = wire.b.counters
    assert counters["truncated"] > 0
    assert counters["bad_checksum"] >= 2
    assert wire.b.connection_count == 1
    assert server.readable_bytes == 0
    wire.b.receive(good, wire.now)  # and the real segment still gets through
    assert server.receive() == b"hi"


def test_segments_for_other_addresses_and_other_protocols_are_counted() -> None:
    wire = Wire()
    other = build_segment(A_V4.packed, A_V4.packed, (1, 2), 0, 0, TCP_ACK, 0)
    wire.b.receive(other, wire.now)
    udp = bytearray(other)
    udp[9] = 17
    wire.b.receive(bytes(udp), wire.now)
    assert wire.b.counters["not_local"] == 1
    assert wire.b.counters["not_tcp"] + wire.b.counters["bad_checksum"] == 1


def test_icmp_echo_is_answered_on_ipv4_and_ipv6() -> None:
    wire = Wire()
    wire.b.receive(echo_request_packet(A_V4, B_V4, 7), wire.now)
    (reply,) = wire.b.poll(wire.now)
    assert is_echo_reply(reply)
    assert reply[12:16] == B_V4.packed and reply[16:20] == A_V4.packed
    assert sum_le(reply[:20]) % ONES == 0 and sum_le(reply[20:]) % ONES == 0
    body = struct.pack("!BBHHH", ICMPV6_ECHO_REQUEST, 0, 0, 1, 2) + b"ping"
    addresses = A_V6.packed + B_V6.packed
    checksum = ONES - (pseudo_sum_le(addresses, PROTO_ICMPV6, len(body)) + sum_le(body)) % ONES
    body = body[:2] + checksum.to_bytes(2, "little") + body[4:]
    header = bytes((0x60, 0, 0, 0)) + len(body).to_bytes(2) + bytes((PROTO_ICMPV6, 64))
    wire.b.receive(header + addresses + body, wire.now)
    (reply6,) = wire.b.poll(wire.now)
    assert reply6[40] == ICMPV6_ECHO_REPLY and reply6[44:] == body[4:]
    total = pseudo_sum_le(B_V6.packed + A_V6.packed, PROTO_ICMPV6, len(reply6) - 40)
    assert (total + sum_le(reply6[40:])) % ONES == 0
    bad = bytearray(header + addresses + body)
    bad[-1] ^= 1
    wire.b.receive(bytes(bad), wire.now)
    assert wire.b.poll(wire.now) == [] and wire.b.counters["bad_echo"] == 1


_NEAR_OR_FAR = st.one_of(st.just(0), st.integers(-3000, 3000), st.integers(-70_000, 70_000))
"""Offsets from what the connection expects: exact, close, or anywhere near a window."""
_OPTIONS = st.one_of(
    st.just(b""),
    st.binary(min_size=0, max_size=40).map(lambda b: b + b"\0" * (-len(b) % 4)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            _NEAR_OR_FAR,
            _NEAR_OR_FAR,
            st.integers(0, 0xFF),
            st.integers(0, 0xFFFF),
            _OPTIONS,
            st.integers(0, 3000),
        ),
        max_size=25,
    )
)
def test_hostile_segments_raise_nothing_and_memory_stays_bounded(
    segments: list[tuple[int, int, int, int, bytes, int]],
) -> None:
    config = StackConfig(receive_buffer_bytes=20_000, max_out_of_order_segments=4)
    wire = Wire(config_b=config)
    client, server = open_pair(wire)
    server.send(payload(30_000, 1))
    told = parse_segment(wire.b.poll(wire.now)[-1])  # the server's last word
    ports = (client.local[1], client.remote[1])
    for seq_delta, ack_delta, flags, window, options, length in segments:
        seq = (told.ack + seq_delta) % 2**32
        ack = (told.seq + ack_delta) % 2**32
        packet = build_segment(
            A_V4.packed, B_V4.packed, ports, seq, ack, flags, window, options, b"z" * length
        )
        wire.b.receive(packet, wire.now)
        wire.now += 0.01
        for answer in wire.b.poll(wire.now):
            told = parse_segment(answer)
        assert server.readable_bytes <= config.receive_buffer_bytes
        out_of_order = server._receiver.ooo  # no public view of the queue's memory
        assert len(out_of_order) <= config.max_out_of_order_segments
        assert out_of_order.bytes <= config.receive_buffer_bytes
        assert server.send_buffered_bytes <= config.send_buffer_bytes


def test_a_connection_still_works_after_hostile_segments() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    rng = random.Random(3)
    ports = (client.local[1], client.remote[1])
    for _ in range(300):
        flags = rng.choice([0x10, 0x11, 0x12, 0x14, 0x18, 0x02, 0x3F])
        seq, ack = rng.getrandbits(32), rng.getrandbits(32)
        wire.b.receive(
            build_segment(A_V4.packed, B_V4.packed, ports, seq, ack, flags, 500, b"", b"x"),
            wire.now,
        )
    data = payload(100_000, 2)
    assert transfer(wire, client, server, data) == data


def test_a_peer_announcing_a_tiny_mss_still_gets_its_data() -> None:
    # A announces an MSS of 1; the wire carries what B sends at the floor (64) and options
    wire = Wire(config_a=StackConfig(mtu=20 + 20 + 1), mtu=20 + 20 + 64 + 40)
    client, server = open_pair(wire)
    assert server.mss == 64  # the floor, not 1
    data = payload(20_000, 4)
    assert transfer(wire, server, client, data) == data
