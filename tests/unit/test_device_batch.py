"""The batch fast path of the sans-IO Device: `send` and `receive` of many at once.

Each batch must behave exactly like `send` / `receive` of its items one at a time, in
order: same packets out of the TUN on the far side, byte for byte,
same drop counters, same byte counters, same roaming. A and B come from conftest.py.
"""

from dataclasses import dataclass
from ipaddress import IPv4Network

import pytest
from conftest import (
    MTU,
    NOW,
    Node,
    current_keypair,
    exchange,
    ipv4_packet,
    ipv6_packet,
    make_node,
    make_pair,
    peer_of,
    seal,
    take,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from test_offload import split, tcp_super_packet

from pilotif.packet.segments import SuperPacket
from pilotif.wg.constants import (
    AEAD_TAG_SIZE,
    MAX_STAGED_PACKETS,
    MESSAGE_INITIATION,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REKEY_TIMEOUT_S,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from pilotif.wg.drops import DropReason
from pilotif.wg.events import EndpointChanged, Event, HandshakeCompleted
from pilotif.wg.fastpath import rows as rows_module
from pilotif.wg.messages import TRANSPORT_HEADER

OVERHEAD_BYTES = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
SEALED_BYTES = 64 * (MTU + OVERHEAD_BYTES)
"""Room for a whole test batch in `sealed` (and for its plaintexts)."""
MSS = MTU - 20 - 20
ROAMED_ENDPOINT = ("198.18.1.99", 40000)
NO_ROUTE_V4 = "100.64.0.99"
UNKNOWN_INDEX = 0xDEADBEEF
TRUNCATED_BYTES = TRANSPORT_MIN_SIZE - 1
SMALL_DATAGRAM_BYTES = 2 * OVERHEAD_BYTES + 64
"""Room left in `sealed` after three full-size datagrams for one small one only."""


def drops(node: Node) -> dict[DropReason, int]:
    """The non-zero drop counters of a node."""
    return {reason: count for reason, count in node.device.drops.items() if count}


def established_pair() -> tuple[Node, Node]:
    """A and B with a session A initiated at NOW; all outputs drained."""
    a, b = make_pair()
    a.device.send((a.packet_to(b, b"hello"),), NOW)
    exchange(a, b, NOW)
    assert peer_of(b, a).current is not None
    for node in (a, b):
        node.to_tun.clear()
        node.events.clear()
    return a, b


@pytest.fixture
def established() -> tuple[Node, Node]:
    """A and B with a session; see `established_pair`."""
    return established_pair()


def sealed_buffer(size: int = SEALED_BYTES) -> memoryview:
    return memoryview(bytearray(size))


def batch_send(node: Node, packets: list[bytes], sealed: memoryview | None = None) -> None:
    node.device.send(packets, NOW, sealed if sealed is not None else sealed_buffer())


def take_bytes(node: Node) -> list[tuple[bytes, tuple[str, int]]]:
    """Every queued datagram copied out (batch views die when `sealed` is reused)."""
    return [(bytes(datagram), endpoint) for datagram, endpoint in take(node)]


def batch_receive(
    node: Node, datagrams: list[bytes], source: tuple[str, int], now: float = NOW
) -> None:
    plaintexts = memoryview(bytearray(sum(len(d) for d in datagrams)))
    node.device.receive(datagrams, source, now, plaintexts)


def delivered(node: Node) -> list[bytes]:
    """What the node wrote to its TUN, copied; empties the list."""
    packets = [bytes(packet) for packet in node.to_tun]
    node.to_tun.clear()
    return packets


def counter_of(datagram: bytes) -> int:
    kind, _, counter = TRANSPORT_HEADER.unpack_from(datagram)
    assert kind == MESSAGE_TRANSPORT
    return int(counter)


def flip(datagram: bytes, position: int) -> bytes:
    changed = bytearray(datagram)
    changed[position] ^= 0xFF
    return bytes(changed)


def tcp_segment(a: Node, b: Node, sequence: int, size: int = MSS) -> bytes:
    """An MTU-sized IPv4 TCP segment from A to B."""
    payload = bytes((sequence + i) % 251 for i in range(size))
    return bytes(
        IP(src=str(a.v4), dst=str(b.v4), flags="DF")
        / TCP(sport=40000, dport=5201, seq=sequence, flags="A")
        / Raw(payload)
    )


def ipv6_udp(a: Node, b: Node, payload: bytes) -> bytes:
    return bytes(IPv6(src=str(a.v6), dst=str(b.v6)) / UDP(sport=5353, dport=5353) / Raw(payload))


def ipv4_with_options(a: Node, b: Node) -> bytes:
    """An IPv4 packet with a 24-byte header (IHL 6): not the receiver's fast shape."""
    return bytes(IP(src=str(a.v4), dst=str(b.v4), options=b"\x01\x01\x01\x00") / Raw(b"opt"))


def good_mix(a: Node, b: Node) -> list[bytes]:
    """Packets to B of every shape: full-size TCP, odd sizes needing padding, IPv6."""
    return [
        tcp_segment(a, b, 1),
        tcp_segment(a, b, 2),
        a.packet_to(b, b"x"),
        a.packet_to(b, b""),
        ipv6_udp(a, b, b"six"),
        a.packet_to(b, bytes(range(200))),
        ipv4_with_options(a, b),
        tcp_segment(a, b, 3, size=MSS - 7),
        a.packet_to(b, b"fifteen bytes!!", v6=True),
        tcp_segment(a, b, 4),
    ]


def hostile_mix(a: Node, b: Node, third: Node) -> list[bytes]:
    """The good mix with, in between, packets A drops or holds for a handshake."""
    good = good_mix(a, b)
    return [
        good[0],
        b"",
        good[1],
        ipv4_packet(a.v4, NO_ROUTE_V4, b"nowhere"),
        good[2],
        good[3],
        b"\x00" * 40,
        a.packet_to(third, b"no endpoint"),
        good[4],
        b"\x45" + bytes(10),
        good[5],
        good[6],
        good[7],
        good[8],
        good[9],
    ]


def add_endpointless_peer(a: Node, third: Node) -> None:
    a.device.add_peer(third.device.public_key, allowed_ips=[IPv4Network(f"{third.v4}/32")], now=NOW)


# -- equivalence with the one-at-a-time path ---------------------------------------


@dataclass
class _Outcome:
    """What a user sees of one trip of the mix from A to B."""

    delivered: list[bytes]
    lengths: list[int]
    counters: list[int]
    sender_drops: dict[DropReason, int]
    receiver_drops: dict[DropReason, int]
    tx_bytes: int
    rx_bytes: int
    events: list[Event]


def _send_mix(use_batch: bool) -> tuple[_Outcome, list[bytes], int]:
    """A fresh session, the hostile mix from A to B in batches or one at a time; also the
    packets B should get and A's send counter before."""
    a, b = established_pair()
    third = make_node(3)
    add_endpointless_peer(a, third)
    keypair = current_keypair(a, b)
    packets = hostile_mix(a, b, third)
    counter_before = keypair.send_counter
    tx_before, rx_before = peer_of(a, b).tx_bytes, peer_of(b, a).rx_bytes
    if use_batch:
        batch_send(a, packets)
    else:
        for packet in packets:
            a.device.send((packet,), NOW)
    sent = take_bytes(a)
    assert {endpoint for _, endpoint in sent} == {b.endpoint}
    datagrams = [datagram for datagram, _ in sent]
    if use_batch:
        batch_receive(b, datagrams, a.endpoint)
    else:
        for datagram in datagrams:
            b.device.receive((datagram,), a.endpoint, NOW)
    outcome = _Outcome(
        delivered=delivered(b),
        lengths=[len(d) for d in datagrams],
        counters=[counter_of(d) for d in datagrams],
        sender_drops=drops(a),
        receiver_drops=drops(b),
        tx_bytes=peer_of(a, b).tx_bytes - tx_before,
        rx_bytes=peer_of(b, a).rx_bytes - rx_before,
        events=a.events + b.events,
    )
    return outcome, good_mix(a, b), counter_before


def test_batch_delivers_the_mix_in_order_byte_for_byte_like_one_at_a_time() -> None:
    batch, expected, counter_before = _send_mix(use_batch=True)
    one_by_one, expected_one_by_one, _ = _send_mix(use_batch=False)

    assert batch.delivered == expected == expected_one_by_one
    assert batch.counters == list(range(counter_before, counter_before + len(expected)))
    assert batch.sender_drops == {
        DropReason.NOT_IP: 3,
        DropReason.NO_ROUTE: 1,
        DropReason.NO_ENDPOINT: 1,
    }
    assert batch.receiver_drops == {}
    assert batch.tx_bytes == batch.rx_bytes == sum(batch.lengths)
    assert batch == one_by_one


def test_padding_is_to_16_bytes_and_never_past_the_mtu(established: tuple[Node, Node]) -> None:
    a, b = established
    packets = [a.packet_to(b, bytes(n)) for n in (0, 1, 12, 13, 100)] + [tcp_segment(a, b, 9)]
    batch_send(a, packets)
    lengths = [len(datagram) - OVERHEAD_BYTES for datagram, _ in take(a)]
    assert lengths == [32, 32, 32, 48, 128, MTU]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["v4", "v6", "noroute", "junk"]), st.integers(0, MSS)),
        min_size=1,
        max_size=20,
    )
)
def test_any_batch_equals_one_at_a_time(shapes: list[tuple[str, int]]) -> None:
    batched, single = established_pair(), established_pair()
    outcomes = []
    for (a, b), use_batch in ((batched, True), (single, False)):
        packets = []
        for kind, size in shapes:
            payload = bytes(i % 256 for i in range(size))
            if kind == "v4":
                packets.append(a.packet_to(b, payload))
            elif kind == "v6":
                packets.append(a.packet_to(b, payload, v6=True))
            elif kind == "noroute":
                packets.append(ipv4_packet(a.v4, NO_ROUTE_V4, payload))
            else:
                packets.append(payload[:40])
        if use_batch:
            batch_send(a, packets)
            datagrams = [d for d, _ in take_bytes(a)]
            batch_receive(b, datagrams, a.endpoint)
        else:
            for packet in packets:
                a.device.send((packet,), NOW)
            datagrams = [d for d, _ in take_bytes(a)]
            for datagram in datagrams:
                b.device.receive((datagram,), a.endpoint, NOW)
        outcomes.append(
            (
                delivered(b),
                [len(d) for d in datagrams],
                drops(a),
                drops(b),
                peer_of(a, b).tx_bytes,
                peer_of(b, a).rx_bytes,
            )
        )
    assert outcomes[0] == outcomes[1]


# -- counters and nonces -----------------------------------------------------------


def test_send_counter_advances_by_the_batch_and_nonces_never_repeat(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    keypair = current_keypair(a, b)
    sealed = sealed_buffer()
    datagrams: list[bytes] = []
    expected: list[bytes] = []
    for round_number in range(3):
        packets = [tcp_segment(a, b, 100 * round_number + i) for i in range(7)]
        packets.append(a.packet_to(b, b"tail"))
        before = keypair.send_counter
        a.device.send(packets, NOW, sealed)
        assert keypair.send_counter == before + len(packets)
        datagrams += [d for d, _ in take_bytes(a)]
        expected += packets

    counters = [counter_of(d) for d in datagrams]
    assert len(set(counters)) == len(counters) == len(expected)
    assert counters == sorted(counters)

    batch_receive(b, datagrams, a.endpoint)
    assert delivered(b) == expected
    assert drops(b) == {}

    batch_receive(b, datagrams, a.endpoint)
    for datagram in datagrams[:3]:
        b.device.receive((datagram,), a.endpoint, NOW)
    assert delivered(b) == []
    assert drops(b) == {DropReason.REPLAY: len(datagrams) + 3}


# -- hostile input in a receive batch ----------------------------------------------


def test_bad_datagrams_inside_a_batch_are_counted_and_good_ones_delivered_in_order(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    keypair = current_keypair(a, b)
    packets = [a.packet_to(b, bytes([i]) * (10 + i)) for i in range(6)]
    batch_send(a, packets)
    good = [d for d, _ in take_bytes(a)]
    forged = seal(keypair, a.packet_to(b, b"forged"))
    bad_tag = flip(forged, len(forged) - 1)
    unknown_index = TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, UNKNOWN_INDEX, 0) + good[0][16:]
    garbage = bytes((i * 37 + 11) % 256 for i in range(120))
    batch = [
        good[0],
        good[0],
        good[1],
        good[2][:TRUNCATED_BYTES],
        good[2],
        bad_tag,
        good[3],
        unknown_index,
        garbage,
        good[4],
        b"",
        good[1],
        good[5],
    ]
    rx_before = peer_of(b, a).rx_bytes

    batch_receive(b, batch, a.endpoint)

    assert delivered(b) == packets
    assert drops(b) == {
        DropReason.REPLAY: 2,
        DropReason.MALFORMED: 3,
        DropReason.DECRYPT_FAILED: 1,
        DropReason.UNKNOWN_INDEX: 1,
    }
    assert peer_of(b, a).rx_bytes - rx_before == sum(len(d) for d in good)
    assert b.events == []


def test_a_batch_of_only_replays_from_a_new_source_does_not_roam(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    batch_send(a, [a.packet_to(b, bytes([i]) * 30) for i in range(4)])
    good = [d for d, _ in take_bytes(a)]
    batch_receive(b, good, a.endpoint)
    delivered(b)
    peer = peer_of(b, a)
    rx_before, last_received = peer.rx_bytes, peer.last_received_s

    garbage = bytes(range(100))
    unknown_index = TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, UNKNOWN_INDEX, 0) + good[0][16:]
    replays = [good[0], good[1], garbage, good[2], unknown_index, good[3]]
    batch_receive(b, replays, ROAMED_ENDPOINT, now=NOW + 1)
    keypair = current_keypair(a, b)
    forged = [flip(seal(keypair, a.packet_to(b, b"forged")), -1) for _ in range(4)]
    batch_receive(b, forged, ROAMED_ENDPOINT, now=NOW + 1)

    assert peer.endpoint == a.endpoint
    assert b.events == []
    assert (peer.rx_bytes, peer.last_received_s) == (rx_before, last_received)
    assert delivered(b) == []
    assert drops(b) == {
        DropReason.REPLAY: 4,
        DropReason.MALFORMED: 1,
        DropReason.UNKNOWN_INDEX: 1,
        DropReason.DECRYPT_FAILED: 4,
    }
    batch_send(b, [b.packet_to(a, b"reply")])
    assert [endpoint for _, endpoint in take(b)] == [a.endpoint]


def test_a_batch_with_one_valid_message_from_a_new_source_roams(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    batch_send(a, [a.packet_to(b, bytes([i]) * 30) for i in range(4)])
    old = [d for d, _ in take_bytes(a)]
    batch_receive(b, old[:3], a.endpoint)
    delivered(b)
    fresh = old[3]

    batch_receive(b, [*old[:3], fresh, old[0]], ROAMED_ENDPOINT)

    peer = peer_of(b, a)
    assert peer.endpoint == ROAMED_ENDPOINT
    assert b.events == [EndpointChanged(a.device.public_key, ROAMED_ENDPOINT)]
    assert delivered(b) == [a.packet_to(b, bytes([3]) * 30)]
    batch_send(b, [b.packet_to(a, b"reply")])
    assert [endpoint for _, endpoint in take(b)] == [ROAMED_ENDPOINT]


# -- plaintexts that decrypt but must not reach the TUN ----------------------------


def test_decrypted_plaintexts_that_are_not_ip_or_not_allowed_are_dropped(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    keypair = current_keypair(a, b)
    good = [a.packet_to(b, b"one"), ipv4_with_options(a, b), a.packet_to(b, b"three", v6=True)]
    too_long = bytearray(a.packet_to(b, b"claims more"))
    too_long[2:4] = (len(too_long) + 32).to_bytes(2, "big")
    short_v6 = ipv6_packet(a.v6, b.v6)[:30]
    batch = [
        seal(keypair, good[0]),
        seal(keypair, b"definitely not an IP packet, just words"),
        seal(keypair, b"\x45" + bytes(18)),
        seal(keypair, ipv4_packet("100.64.0.77", b.v4, b"spoofed")),
        seal(keypair, good[1]),
        seal(keypair, ipv6_packet("fd00:64::77", b.v6, b"spoofed six")),
        seal(keypair, bytes(too_long) + bytes(16)),
        seal(keypair, short_v6),
        seal(keypair, b""),
        seal(keypair, ipv4_packet(b.v4, a.v4, b"B's own address")),
        seal(keypair, good[2] + bytes(7)),
    ]
    rx_before = peer_of(b, a).rx_bytes

    batch_receive(b, batch, a.endpoint)

    assert delivered(b) == good
    assert drops(b) == {DropReason.NOT_IP: 4, DropReason.SOURCE_NOT_ALLOWED: 3}
    assert peer_of(b, a).rx_bytes - rx_before == sum(len(d) for d in batch)


# -- sealed buffer too small -------------------------------------------------------


def test_packets_that_do_not_fit_in_sealed_go_to_a_new_buffer_in_order(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    keypair = current_keypair(a, b)
    packets = [tcp_segment(a, b, i) for i in range(8)]
    small = a.packet_to(b, b"small, fits after the overflow")
    packets[5:5] = [small]
    sealed = sealed_buffer(3 * (MTU + OVERHEAD_BYTES) + SMALL_DATAGRAM_BYTES)
    before = keypair.send_counter

    a.device.send(packets, NOW, sealed)

    in_callers_buffer = [isinstance(d, memoryview) and d.obj is sealed.obj for d, _ in a.outgoing]
    assert in_callers_buffer == [True] * 3 + [False] * 6
    sent = take(a)
    assert len(sent) == len(packets)
    assert keypair.send_counter == before + len(packets)
    assert [counter_of(d) for d, _ in sent] == list(range(before, before + len(packets)))
    batch_receive(b, [d for d, _ in sent], a.endpoint)
    assert delivered(b) == packets
    assert drops(a) == drops(b) == {}


def test_an_empty_sealed_buffer_still_sends_everything(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    packets = [tcp_segment(a, b, i) for i in range(3)]

    a.device.send(packets, NOW, memoryview(bytearray()))

    datagrams = [d for d, _ in take_bytes(a)]
    for datagram in datagrams:
        b.device.receive((datagram,), a.endpoint, NOW)
    assert delivered(b) == packets


# -- no session yet ----------------------------------------------------------------


def test_batch_without_a_session_stages_packets_and_initiates_once() -> None:
    a, b = make_pair()
    packets = [a.packet_to(b, bytes([i]) * 20) for i in range(3)]

    batch_send(a, packets)

    sent = take(a)
    assert [(bytes(d)[0], len(d), endpoint) for d, endpoint in sent] == [
        (MESSAGE_INITIATION, 148, b.endpoint)
    ]
    assert list(peer_of(a, b).staged) == packets
    a.outgoing.extend(sent)
    exchange(a, b, NOW)
    assert delivered(b) == packets
    assert drops(a) == drops(b) == {}


def test_batch_without_a_session_drops_the_oldest_staged_like_a_lone_send() -> None:
    a, b = make_pair()
    packets = [a.packet_to(b, i.to_bytes(2, "big")) for i in range(MAX_STAGED_PACKETS + 2)]

    batch_send(a, packets)

    assert drops(a) == {DropReason.QUEUE_FULL: 2}
    assert list(peer_of(a, b).staged) == packets[2:]
    exchange(a, b, NOW)
    assert delivered(b) == packets[2:]


# -- the responder's new session promoted inside a batch ---------------------------


def test_first_message_of_a_responders_new_session_inside_a_batch_promotes_it() -> None:
    a, b = make_pair()
    staged = [a.packet_to(b, b"staged")]
    a.device.send((staged[0],), NOW)
    (initiation, _), *_ = take(a)
    b.device.receive((bytes(initiation),), a.endpoint, NOW)
    assert peer_of(b, a).next is not None and peer_of(b, a).current is None
    response = [d for d, _ in take_bytes(b)]
    for datagram in response:
        a.device.receive((datagram,), b.endpoint, NOW)
    a.events.clear()
    more = [tcp_segment(a, b, i) for i in range(3)] + [a.packet_to(b, b"last", v6=True)]
    batch_send(a, more)
    datagrams = [d for d, _ in take_bytes(a)]
    assert len(datagrams) == len(staged) + len(more)

    batch_receive(b, datagrams, a.endpoint)

    peer = peer_of(b, a)
    assert peer.next is None and peer.current is not None
    assert b.events == [HandshakeCompleted(a.device.public_key, initiator=False)]
    assert delivered(b) == staged + more
    assert drops(b) == {}
    batch_send(b, [b.packet_to(a, b"answer")])
    batch_receive(a, [d for d, _ in take_bytes(b)], b.endpoint)
    assert delivered(a) == [b.packet_to(a, b"answer")]


def test_batch_stops_encrypting_at_the_reject_limit_and_stages_the_rest(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    keypair = current_keypair(a, b)
    keypair.send_counter = REJECT_AFTER_MESSAGES - 2
    packets = [a.packet_to(b, bytes([i]) * 20) for i in range(4)]

    a.device.send(packets, NOW + REKEY_TIMEOUT_S, sealed_buffer())

    sent = [d for d, _ in take_bytes(a)]
    assert [d[0] for d in sent] == [MESSAGE_TRANSPORT, MESSAGE_TRANSPORT, MESSAGE_INITIATION]
    assert [counter_of(d) for d in sent[:2]] == [
        REJECT_AFTER_MESSAGES - 2,
        REJECT_AFTER_MESSAGES - 1,
    ]
    assert list(peer_of(a, b).staged) == packets[2:]


def test_a_malformed_packet_to_the_same_destination_is_dropped_like_a_lone_send(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    malformed = bytearray(a.packet_to(b, b"claims more than it has"))
    malformed[2:4] = (len(malformed) + 100).to_bytes(2, "big")
    a.device.send((bytes(malformed),), NOW)
    assert (take(a), drops(a)) == ([], {DropReason.NOT_IP: 1})

    batch_send(a, [a.packet_to(b, b"fine"), bytes(malformed)])

    assert len(take(a)) == 1
    assert drops(a) == {DropReason.NOT_IP: 2}


# -- a TCP super-packet without the native loop ---------------------------------------


def test_without_the_native_loop_a_super_packet_is_cut_and_sent_as_a_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # test_seal_tso.py checks that the native path sends exactly that.
    monkeypatch.setattr(rows_module, "seal_tso", None)
    a, b = established_pair()
    raw, header = tcp_super_packet(bytes(20000))
    counter = current_keypair(a, b).send_counter
    batch = SuperPacket(memoryview(raw), header.csum_start, header.gso_size)
    a.device.send(batch, NOW, sealed_buffer())
    assert not a.trains
    sent = take_bytes(a)
    current_keypair(a, b).send_counter = counter
    batch_send(a, split(raw, header))
    assert sent == take_bytes(a)
