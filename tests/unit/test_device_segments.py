"""Device.receive of one GRO receive (`Coalesced`: datagrams back to back, all but the
last of `segment_size` bytes) must do exactly what receiving `split_coalesced(...)` does:
same packets out of the TUN byte for byte and in order, same drop counters, same byte
counters, same roaming, whether the vectorised path takes the batch or a fallback does.
A and B come from conftest.py; the batch helpers from test_device_batch.py.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from conftest import (
    MTU,
    NOW,
    Node,
    connect,
    current_keypair,
    exchange,
    ipv4_packet,
    ipv6_packet,
    make_node,
    next_deadline,
    peer_of,
    seal,
    take,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from test_device_batch import (
    MSS,
    ROAMED_ENDPOINT,
    UNKNOWN_INDEX,
    batch_send,
    counter_of,
    delivered,
    drops,
    established_pair,
    flip,
    take_bytes,
    tcp_segment,
)

from pilotif.wg.constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_TIME_S,
    REKEY_TIMEOUT_S,
)
from pilotif.wg.drops import DropReason
from pilotif.wg.events import EndpointChanged, Event
from pilotif.wg.fastpath import batch_loops
from pilotif.wg.messages import TRANSPORT_HEADER, Coalesced, split_coalesced

MAX_GRO_SEGMENTS = 64
"""The most datagrams the kernel coalesces into one receive."""
PLAIN_BYTES = 256
"""The plaintext size of every full row in the hand-sealed batches."""
SHORT_PLAIN_BYTES = 100
"""The plaintext size of their shorter last row."""
ROWS = 6
SPOOFED_V4 = "100.64.0.77"
SPOOFED_V6 = "fd00:64::77"
IPV4_OPTIONS = b"\x01\x01\x01\x00"

Endpoint = tuple[str, int]
Receive = tuple[bytes, int]
"""One GRO receive: the glued datagrams and the segment size."""


# -- helpers -----------------------------------------------------------------------


def glue(datagrams: list[bytes], *, single_segment_size: int | None = None) -> list[Receive]:
    """Cut datagrams (in order) into GRO receives as the kernel coalesces them: a run of
    equal sizes, maybe ended by one shorter datagram. A receive of one datagram gets
    `single_segment_size` (0 or its length when None)."""
    receives: list[Receive] = []
    start = 0
    while start < len(datagrams):
        size = len(datagrams[start])
        end = start + 1
        while end < len(datagrams) and end - start < MAX_GRO_SEGMENTS:
            if len(datagrams[end]) > size:
                break
            end += 1
            if len(datagrams[end - 1]) < size:
                break
        if end - start == 1 and single_segment_size is not None:
            size = single_segment_size
        receives.append((b"".join(datagrams[start:end]), size))
        start = end
    return receives


def one_receive(datagrams: list[bytes]) -> Receive:
    """All of `datagrams` as one GRO receive (the test made them coalescable)."""
    (receive,) = glue(datagrams)
    assert len(split_coalesced(memoryview(receive[0]), receive[1])) == len(datagrams)
    return receive


def receive(
    node: Node,
    receives: list[Receive],
    source: Endpoint,
    now: float = NOW,
    *,
    segments: bool = True,
) -> list[bytes]:
    """Hand each receive to `receive` as one `Coalesced` (or, with `segments` False, its datagrams
    to `receive_datagrams`), one plaintext buffer reused as a socket loop does; returns
    what reached the TUN, copied after each receive."""
    plaintexts = memoryview(bytearray(max((len(buffer) for buffer, _ in receives), default=0)))
    packets: list[bytes] = []
    for buffer, segment_size in receives:
        view = memoryview(bytearray(buffer))
        if segments:
            node.device.receive(Coalesced(view, segment_size), source, now, plaintexts)
        else:
            datagrams = split_coalesced(view, segment_size)
            node.device.receive(datagrams, source, now, plaintexts)
        packets += delivered(node)
    return packets


def count_fallbacks(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the batches a GRO receive hands to `_receive_datagrams`: an empty
    list means the vectorised path took every receive."""
    calls: list[int] = []
    original = node.device._receive_datagrams

    def spy(datagrams: list[memoryview], source: Endpoint, now: float, plain: memoryview) -> None:
        calls.append(len(datagrams))
        original(datagrams, source, now, plain)

    monkeypatch.setattr(node.device, "_receive_datagrams", spy)
    return calls


def sent(node: Node, packets: list[bytes]) -> list[bytes]:
    """The datagrams `node` seals for `packets` in one batch, copied out."""
    batch_send(node, packets)
    return [datagram for datagram, _ in take_bytes(node)]


def sealed_rows(a: Node, b: Node, rows: list[bytes]) -> list[bytes]:
    """`rows` sealed as they are (no padding) in A's current session to B."""
    keypair = current_keypair(a, b)
    return [seal(keypair, row) for row in rows]


def payload(size: int, seed: int) -> bytes:
    return bytes((seed * 7 + i) % 251 for i in range(size))


def plain_rows(a: Node, b: Node) -> list[bytes]:
    """ROWS IPv4 packets from A to B of PLAIN_BYTES, then a shorter one."""
    full = [ipv4_packet(a.v4, b.v4, payload(PLAIN_BYTES - 20, i)) for i in range(ROWS)]
    return [*full, ipv4_packet(a.v4, b.v4, payload(SHORT_PLAIN_BYTES - 20, ROWS))]


def with_total_length(packet: bytes, total: int) -> bytes:
    changed = bytearray(packet)
    changed[2:4] = total.to_bytes(2, "big")
    return bytes(changed)


def tcp_segments(a: Node, b: Node, count: int, first: int = 0) -> list[bytes]:
    return [tcp_segment(a, b, first + i) for i in range(count)]


# -- equivalence with receive_datagrams --------------------------------------------


@dataclass
class _Outcome:
    """What a user sees of B after receiving one script of datagrams from A."""

    delivered: list[bytes]
    drops: dict[DropReason, int]
    rx_bytes: int
    endpoint: Endpoint | None
    last_received_s: float | None
    unanswered_since_s: float | None
    next_timer: float | None
    outgoing: list[tuple[int, Endpoint]]
    events: list[Event]


def _outcome(a: Node, b: Node, packets: list[bytes], rx_before: int) -> _Outcome:
    peer = peer_of(b, a)
    return _Outcome(
        delivered=packets,
        drops=drops(b),
        rx_bytes=peer.rx_bytes - rx_before,
        endpoint=peer.endpoint,
        last_received_s=peer.last_received_s,
        unanswered_since_s=peer.unanswered_since_s,
        next_timer=next_deadline(b),
        outgoing=[(len(datagram), endpoint) for datagram, endpoint in take(b)],
        events=[replace(event, public_key=b"A") for event in b.events],
    )


def _full_size_packet(a: Node, b: Node, kind: str, sequence: int) -> bytes:
    """An MTU-size packet from A to B of one shape (all of them seal to equal sizes)."""
    if kind == "spoofed":
        return bytes(
            IP(src=SPOOFED_V4, dst=str(b.v4)) / TCP(seq=sequence, flags="A") / Raw(bytes(MSS))
        )
    if kind == "options":
        return bytes(
            IP(src=str(a.v4), dst=str(b.v4), options=IPV4_OPTIONS)
            / TCP(seq=sequence, flags="A")
            / Raw(bytes(MSS - len(IPV4_OPTIONS)))
        )
    if kind == "v6":
        return bytes(
            IPv6(src=str(a.v6), dst=str(b.v6)) / TCP(seq=sequence, flags="A") / Raw(bytes(MTU - 60))
        )
    return tcp_segment(a, b, sequence)


def _tail_packet(a: Node, b: Node, kind: str, size: int, sequence: int) -> bytes:
    if kind == "tcp":
        return tcp_segment(a, b, sequence, size=size)
    if kind == "v6":
        return a.packet_to(b, payload(size, sequence), v6=True)
    return a.packet_to(b, payload(size, sequence))


_BURSTS = st.lists(
    st.tuples(
        st.integers(0, 9),
        st.sampled_from(["tcp", "tcp", "spoofed", "options", "v6"]),
        st.integers(0, 8),
        st.sampled_from(["none", "tcp", "v4", "v6", "keepalive"]),
        st.integers(0, MSS - 48),
    ),
    min_size=1,
    max_size=4,
)
"""Per burst: full-size TCP segments, one odd full-size packet put among them, where, and
a tail packet (maybe shorter, maybe a keepalive) of some size."""
_OPS = ["none", "none", "drop", "corrupt", "replay", "duplicate", "swap", "garbage"]


def _send_script(a: Node, b: Node, bursts: list[tuple[int, str, int, str, int]]) -> list[bytes]:
    """The datagrams A sends B for `bursts`: each burst in one send, then its
    keepalive tail, if any, sealed after it."""
    keypair = current_keypair(a, b)
    datagrams: list[bytes] = []
    sequence = 0
    for tcp_count, odd_kind, odd_position, tail_kind, tail_size in bursts:
        packets = tcp_segments(a, b, tcp_count, sequence)
        packets.insert(min(odd_position, len(packets)), _full_size_packet(a, b, odd_kind, sequence))
        if tail_kind not in ("none", "keepalive"):
            packets.append(_tail_packet(a, b, tail_kind, tail_size, sequence))
        sequence += len(packets)
        datagrams += sent(a, packets)
        if tail_kind == "keepalive":
            datagrams.append(seal(keypair, b""))
    return datagrams


def _hostile(datagrams: list[bytes], op: str, position: int, garbage: bytes) -> list[bytes]:
    """`datagrams` with one thing done to them at `position`."""
    changed = list(datagrams)
    position %= len(changed)
    if op == "drop" and len(changed) > 1:
        del changed[position]
    elif op == "corrupt":
        changed[position] = flip(changed[position], -1)
    elif op == "replay":
        changed += datagrams
    elif op == "duplicate":
        changed.insert(position, changed[position])
    elif op == "swap" and position + 1 < len(changed):
        changed[position : position + 2] = [changed[position + 1], changed[position]]
    elif op == "garbage":
        changed.insert(position, (garbage * len(changed[position]))[: len(changed[position])])
    return changed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bursts=_BURSTS,
    op=st.sampled_from(_OPS),
    position=st.integers(0, 200),
    garbage=st.binary(min_size=1, max_size=64),
    roam=st.booleans(),
    single_segment_size=st.sampled_from([None, 0]),
)
def test_any_glued_batch_equals_receive_datagrams_of_its_split(
    bursts: list[tuple[int, str, int, str, int]],
    op: str,
    position: int,
    garbage: bytes,
    roam: bool,
    single_segment_size: int | None,
) -> None:
    outcomes = []
    for segments in (True, False):
        a, b = established_pair()
        source = ROAMED_ENDPOINT if roam else a.endpoint
        datagrams = _hostile(_send_script(a, b, bursts), op, position, garbage)
        rx_before = peer_of(b, a).rx_bytes
        packets = receive(
            b,
            glue(datagrams, single_segment_size=single_segment_size),
            source,
            segments=segments,
        )
        outcomes.append(_outcome(a, b, packets, rx_before))

    vectorised, reference = outcomes
    assert vectorised == reference
    if op == "none":
        assert vectorised.drops.keys() <= {DropReason.SOURCE_NOT_ALLOWED}
        assert len(vectorised.delivered) + sum(vectorised.drops.values()) == sum(
            (tcp_count + 1 + (tail not in ("none", "keepalive")))
            for tcp_count, _, _, tail, _ in bursts
        )


def test_a_usual_batch_is_taken_by_the_vectorised_path_and_delivered_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = established_pair()
    fallbacks = count_fallbacks(b, monkeypatch)
    packets = [*tcp_segments(a, b, 7), a.packet_to(b, b"short tail")]
    datagrams = sent(a, packets)
    rx_before = peer_of(b, a).rx_bytes

    assert receive(b, [one_receive(datagrams)], a.endpoint) == packets

    assert fallbacks == []
    assert drops(b) == {}
    assert peer_of(b, a).rx_bytes - rx_before == sum(len(d) for d in datagrams)
    assert b.events == []


@pytest.mark.parametrize("segment_size", [0, 1452, 5000])
def test_one_datagram_is_one_datagram_whatever_the_segment_size(segment_size: int) -> None:
    a, b = established_pair()
    packet = tcp_segment(a, b, 1)
    datagrams = sent(a, [packet])
    assert len(datagrams[0]) == 1452

    assert receive(b, [(datagrams[0], segment_size)], a.endpoint) == [packet]
    assert drops(b) == {}


# -- hostile rows inside a glued batch ---------------------------------------------


def test_a_corrupted_row_in_the_middle_is_dropped_and_its_original_still_accepted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = established_pair()
    fallbacks = count_fallbacks(b, monkeypatch)
    packets = tcp_segments(a, b, 6)
    datagrams = sent(a, packets)
    original = datagrams[3]
    datagrams[3] = flip(original, -1)
    rx_before = peer_of(b, a).rx_bytes

    assert receive(b, [one_receive(datagrams)], a.endpoint) == packets[:3] + packets[4:]

    assert fallbacks == []
    assert drops(b) == {DropReason.DECRYPT_FAILED: 1}
    assert peer_of(b, a).rx_bytes - rx_before == 5 * len(original)
    assert receive(b, [(original, 0)], a.endpoint) == [packets[3]]
    assert receive(b, [(original, 0)], a.endpoint) == []
    datagrams[3] = original
    assert receive(b, [one_receive(datagrams)], a.endpoint) == []
    assert drops(b) == {DropReason.DECRYPT_FAILED: 1, DropReason.REPLAY: 1 + len(datagrams)}


def test_a_replayed_batch_from_a_new_source_is_all_dropped_and_does_not_roam() -> None:
    a, b = established_pair()
    packets = [*tcp_segments(a, b, 5), a.packet_to(b, b"tail")]
    glued = one_receive(sent(a, packets))
    assert receive(b, [glued], a.endpoint) == packets
    peer = peer_of(b, a)
    rx_before, last_received = peer.rx_bytes, peer.last_received_s

    assert receive(b, [glued], ROAMED_ENDPOINT, now=NOW + 1) == []

    assert drops(b) == {DropReason.REPLAY: len(packets)}
    assert b.events == []
    assert (peer.endpoint, peer.rx_bytes, peer.last_received_s) == (
        a.endpoint,
        rx_before,
        last_received,
    )


def test_a_glued_batch_of_forgeries_from_a_new_source_neither_delivers_nor_roams() -> None:
    a, b = established_pair()
    forged = [flip(d, -1) for d in sealed_rows(a, b, tcp_segments(a, b, 5))]
    peer = peer_of(b, a)
    rx_before = peer.rx_bytes

    assert receive(b, [one_receive(forged)], ROAMED_ENDPOINT) == []

    assert drops(b) == {DropReason.DECRYPT_FAILED: 5}
    assert b.events == []
    assert (peer.endpoint, peer.rx_bytes) == (a.endpoint, rx_before)


def test_a_batch_missing_a_counter_is_still_delivered_and_the_late_one_after() -> None:
    a, b = established_pair()
    packets = tcp_segments(a, b, 7)
    datagrams = sent(a, packets)
    late = datagrams.pop(3)

    assert receive(b, [one_receive(datagrams)], a.endpoint) == packets[:3] + packets[4:]
    assert receive(b, [(late, len(late))], a.endpoint) == [packets[3]]
    assert drops(b) == {}


def test_a_batch_with_counters_out_of_order_or_repeated_is_handled_per_datagram() -> None:
    a, b = established_pair()
    packets = tcp_segments(a, b, 6)
    d = sent(a, packets)

    glued = one_receive([d[1], d[0], d[2], d[2], d[4], d[3], d[5]])

    assert receive(b, [glued], a.endpoint) == [packets[i] for i in (1, 0, 2, 4, 3, 5)]
    assert drops(b) == {DropReason.REPLAY: 1}


def test_a_batch_with_two_rows_swapped_is_delivered_in_arrival_order() -> None:
    a, b = established_pair()
    packets = tcp_segments(a, b, 6)
    datagrams = sent(a, packets)
    order = [0, 1, 3, 2, 4, 5]

    got = receive(b, [one_receive([datagrams[i] for i in order])], a.endpoint)

    assert got == [packets[i] for i in order]
    assert drops(b) == {}


def test_a_row_of_the_previous_session_inside_a_batch_is_delivered_in_place() -> None:
    a, b = established_pair()
    old = peer_of(a, b).current
    assert old is not None
    later = NOW + REKEY_TIMEOUT_S + 1
    old.created_s = later - REKEY_AFTER_TIME_S - 1
    a.device.send((a.packet_to(b, b"starts a rekey"),), later)
    exchange(a, b, later)
    assert peer_of(a, b).current is not old
    assert peer_of(b, a).previous is not None
    delivered(b)
    b.events.clear()
    packets = tcp_segments(a, b, 6)
    batch_send(a, packets[:2])
    new = peer_of(a, b).current
    assert new is not None
    old.send_counter = new.send_counter
    new.send_counter += 1
    datagrams = sent(a, packets[3:])
    datagrams.insert(2, seal(old, packets[2]))
    assert [counter_of(d) for d in datagrams] == list(range(old.send_counter - 3, new.send_counter))

    assert receive(b, [one_receive(datagrams)], a.endpoint, now=later) == packets
    assert drops(b) == {}
    assert b.events == []


def test_a_row_whose_index_was_rewritten_is_dropped_though_its_counter_fits() -> None:
    a, b = established_pair()
    packets = tcp_segments(a, b, 6)
    datagrams = sent(a, packets)
    header = TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, UNKNOWN_INDEX, counter_of(datagrams[3]))
    datagrams[3] = header + datagrams[3][len(header) :]

    assert receive(b, [one_receive(datagrams)], a.endpoint) == packets[:3] + packets[4:]
    assert drops(b) == {DropReason.UNKNOWN_INDEX: 1}


def test_garbage_and_unknown_indexes_glued_in_are_counted_and_the_rest_delivered() -> None:
    a, b = established_pair()
    packets = tcp_segments(a, b, 6)
    datagrams = sent(a, packets)
    size = len(datagrams[0])
    _, _, counter = TRANSPORT_HEADER.unpack_from(datagrams[-1])
    unknown = TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, UNKNOWN_INDEX, counter + 1)
    garbage = bytes((i * 37 + 11) % 256 for i in range(size))
    glued = [
        datagrams[0],
        garbage,
        datagrams[1],
        datagrams[2],
        unknown + datagrams[3][len(unknown) :],
        datagrams[3],
        datagrams[4],
        datagrams[5],
        b"\x04" + garbage[1:40],
    ]

    assert receive(b, [one_receive(glued)], a.endpoint) == packets
    assert drops(b) == {DropReason.MALFORMED: 2, DropReason.UNKNOWN_INDEX: 1}


def test_rows_with_reserved_bytes_set_are_malformed_though_they_authenticate() -> None:
    a, b = established_pair()
    packets = tcp_segments(a, b, 6)
    datagrams = sent(a, packets)
    reserved = [bytes([d[0], 1]) + d[2:] for d in datagrams]

    assert receive(b, [one_receive(reserved)], a.endpoint) == []
    assert receive(b, [one_receive(reserved[:2] + datagrams[2:])], a.endpoint) == packets[2:]
    assert drops(b) == {DropReason.MALFORMED: 8}


def test_a_batch_running_past_the_reject_limit_is_cut_at_the_limit() -> None:
    a, b = established_pair()
    keypair = current_keypair(a, b)
    keypair.send_counter = REJECT_AFTER_MESSAGES - 3
    packets = tcp_segments(a, b, 5)

    got = receive(b, [one_receive(sealed_rows(a, b, packets))], a.endpoint)

    assert got == packets[:3]
    assert drops(b) == {DropReason.REPLAY: 2}


# -- plaintext checks of the vectorised path ---------------------------------------


def _spoofed(a: Node, b: Node, size: int) -> bytes:
    return ipv4_packet(SPOOFED_V4, b.v4, payload(size - 20, 99))


def _too_long(a: Node, b: Node, size: int) -> bytes:
    return with_total_length(ipv4_packet(a.v4, b.v4, payload(size - 20, 99)), size + 1)


def _too_short(a: Node, b: Node, size: int) -> bytes:
    return with_total_length(ipv4_packet(a.v4, b.v4, payload(size - 20, 99)), 19)


def _version_5(a: Node, b: Node, size: int) -> bytes:
    return b"\x55" + ipv4_packet(a.v4, b.v4, payload(size - 20, 99))[1:]


def _ipv6(a: Node, b: Node, size: int) -> bytes:
    return ipv6_packet(a.v6, b.v6, payload(size - 40, 99))


def _ipv6_spoofed(a: Node, b: Node, size: int) -> bytes:
    return ipv6_packet(SPOOFED_V6, b.v6, payload(size - 40, 99))


def _options(a: Node, b: Node, size: int) -> bytes:
    packet = bytes(
        IP(src=str(a.v4), dst=str(b.v4), options=IPV4_OPTIONS) / Raw(payload(size - 24, 9))
    )
    assert (packet[0], len(packet)) == (0x46, size)
    return packet


def _padded(a: Node, b: Node, size: int) -> bytes:
    return ipv4_packet(a.v4, b.v4, payload(size - 76, 99)) + bytes(56)


def _header_only(a: Node, b: Node, size: int) -> bytes:
    return ipv4_packet(a.v4, b.v4) + bytes(size - 20)


def _declared_length(packet: bytes) -> int:
    """The length an IPv4 or IPv6 header claims for its packet."""
    if packet[0] >> 4 == 4:
        return int.from_bytes(packet[2:4], "big")
    return 40 + int.from_bytes(packet[4:6], "big")


Row = Callable[[Node, Node, int], bytes]
"""A plaintext row of a given size from A to B."""
_DELIVERED: list[Row] = [_ipv6, _options, _padded, _header_only]
_DROPPED: dict[Row, DropReason] = {
    _spoofed: DropReason.SOURCE_NOT_ALLOWED,
    _ipv6_spoofed: DropReason.SOURCE_NOT_ALLOWED,
    _too_long: DropReason.NOT_IP,
    _too_short: DropReason.NOT_IP,
    _version_5: DropReason.NOT_IP,
}


@pytest.mark.parametrize("position", [0, 2, ROWS])
@pytest.mark.parametrize("odd", [*_DELIVERED, *_DROPPED], ids=lambda odd: odd.__name__)
def test_one_odd_plaintext_is_handled_like_a_lone_receive(
    odd: Row, position: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = established_pair()
    fallbacks = count_fallbacks(b, monkeypatch)
    rows = plain_rows(a, b)
    rows[position] = odd(a, b, len(rows[position]))
    datagrams = sealed_rows(a, b, rows)
    rx_before = peer_of(b, a).rx_bytes

    got = receive(b, [one_receive(datagrams)], a.endpoint)

    assert fallbacks == []
    expected = list(rows)
    if odd in _DROPPED:
        del expected[position]
        assert drops(b) == {_DROPPED[odd]: 1}
    else:
        expected[position] = rows[position][: _declared_length(rows[position])]
        assert drops(b) == {}
    assert got == expected
    assert peer_of(b, a).rx_bytes - rx_before == sum(len(d) for d in datagrams)


def test_rows_all_from_another_peers_address_are_all_dropped() -> None:
    a, b = established_pair()
    c = make_node(3)
    connect(b, c)
    rows = [ipv4_packet(c.v4, b.v4, payload(PLAIN_BYTES - 20, i)) for i in range(ROWS)]
    datagrams = sealed_rows(a, b, rows)

    assert receive(b, [one_receive(datagrams)], a.endpoint) == []
    assert drops(b) == {DropReason.SOURCE_NOT_ALLOWED: ROWS}


def test_rows_all_addressed_past_this_node_are_all_dropped() -> None:
    # A node (not a router) takes packets for its own addresses only: a whole batch for
    # another host behind it is dropped, not written to the TUN.
    a, b = established_pair()
    b.device.accept_only_to([b.v4.packed, b.v6.packed])
    rows = [ipv4_packet(a.v4, SPOOFED_V4, payload(PLAIN_BYTES - 20, i)) for i in range(ROWS)]
    datagrams = sealed_rows(a, b, rows)

    assert receive(b, [one_receive(datagrams)], a.endpoint) == []
    assert drops(b) == {DropReason.DESTINATION_NOT_LOCAL: ROWS}
    assert receive(b, [one_receive(sealed_rows(a, b, plain_rows(a, b)))], a.endpoint)


def test_rows_from_two_addresses_of_the_peer_are_all_delivered() -> None:
    a, b = established_pair()
    rows = plain_rows(a, b)
    rows[1] = ipv6_packet(a.v6, b.v6, payload(PLAIN_BYTES - 40, 1))
    rows[4] = ipv6_packet(a.v6, b.v6, payload(PLAIN_BYTES - 40, 4))

    assert receive(b, [one_receive(sealed_rows(a, b, rows))], a.endpoint) == rows
    assert drops(b) == {}


# -- roaming -----------------------------------------------------------------------


def test_a_valid_glued_batch_from_a_new_source_roams_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = established_pair()
    fallbacks = count_fallbacks(b, monkeypatch)
    packets = tcp_segments(a, b, 10)
    datagrams = sent(a, packets)

    got = receive(b, glue(datagrams[:5]) + glue(datagrams[5:]), ROAMED_ENDPOINT, now=NOW + 1)

    assert got == packets
    assert fallbacks == []
    peer = peer_of(b, a)
    assert b.events == [EndpointChanged(a.device.public_key, ROAMED_ENDPOINT)]
    assert (peer.endpoint, peer.last_received_s) == (ROAMED_ENDPOINT, NOW + 1)
    batch_send(b, [b.packet_to(a, b"reply")])
    assert [endpoint for _, endpoint in take(b)] == [ROAMED_ENDPOINT]


def test_a_glued_batch_with_a_forged_row_from_a_new_source_roams_once() -> None:
    a, b = established_pair()
    packets = tcp_segments(a, b, 6)
    datagrams = sent(a, packets)
    datagrams[0] = flip(datagrams[0], -1)

    assert receive(b, [one_receive(datagrams)], ROAMED_ENDPOINT) == packets[1:]

    assert b.events == [EndpointChanged(a.device.public_key, ROAMED_ENDPOINT)]
    assert peer_of(b, a).endpoint == ROAMED_ENDPOINT
    assert drops(b) == {DropReason.DECRYPT_FAILED: 1}


# -- merged TUN writes (merges_for_tun) ---------------------------------------------


def flow_segment(
    a: Node, b: Node, row: int, *, size: int = MSS, spoofed: bool = False, v6: bool = False
) -> bytes:
    """Row `row` of one TCP flow from A to B: consecutive sequence numbers, a full
    segment's payload apart (over IPv6 20 bytes less: every row is as long either way)."""
    full = MSS - 20 * v6
    payload_bytes = bytes((row + i) % 251 for i in range(size - 20 * v6))
    if v6:
        ip: IP | IPv6 = IPv6(src=SPOOFED_V6 if spoofed else str(a.v6), dst=str(b.v6))
    else:
        ip = IP(src=SPOOFED_V4 if spoofed else str(a.v4), dst=str(b.v4), flags="DF")
    return bytes(ip / TCP(sport=40000, dport=5201, seq=row * full, flags="A") / Raw(payload_bytes))


def tun_writes(
    node: Node, receives: list[Receive], source: Endpoint, *, merges: bool
) -> list[bytes]:
    """What a TUN that takes virtio headers gets for each receive: the packets as
    pilotif.tun.offload's TunBatch writes them (coalesced natively, else one by one
    behind a zero header), then the merged writes, as DataPath writes them."""
    node.device.merges_for_tun = merges
    plaintexts = memoryview(bytearray(max(len(buffer) for buffer, _ in receives)))
    writes: list[bytes] = []
    for buffer, segment_size in receives:
        view = memoryview(bytearray(buffer))
        node.device.receive(Coalesced(view, segment_size), source, NOW, plaintexts)
        if batch_loops.coalesce is not None:
            writes += [bytes(write) for write in batch_loops.coalesce(node.to_tun)]
        else:
            writes += [bytes(10) + bytes(packet) for packet in node.to_tun]
        writes += node.tun_writes
        node.to_tun.clear()
        node.tun_writes.clear()
    return writes


_FLOW_CHANGES = ["none", "short-tail", "corrupt", "spoof", "swap", "drop", "replay", "other"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 45),
    change=st.sampled_from(_FLOW_CHANGES),
    position=st.integers(0, 100),
    tail=st.integers(21, MSS),
    v6=st.booleans(),
)
def test_merged_writes_are_what_coalescing_the_delivered_packets_writes(
    rows: int, change: str, position: int, tail: int, v6: bool
) -> None:
    # With merges_for_tun the usual batch (one flow's next segments) is merged from the
    # rows it was decrypted into; whatever the batch, the TUN must get byte for byte
    # what coalescing the packets of the packet-by-packet path gets, with the same
    # drops and byte counters.
    outcomes = []
    for merges in (True, False):
        a, b = established_pair()
        packets = [flow_segment(a, b, row, v6=v6) for row in range(rows)]
        at = position % rows
        if change == "short-tail":
            packets[-1] = flow_segment(a, b, rows - 1, size=tail, v6=v6)
        elif change == "spoof":
            packets[at] = flow_segment(a, b, at, spoofed=True, v6=v6)
        elif change == "other":
            packets[at] = a.packet_to(b, payload(MSS, at))
        datagrams = sent(a, packets)
        if change == "corrupt":
            datagrams[at] = flip(datagrams[at], -1)
        elif change == "swap" and at + 1 < rows:
            datagrams[at : at + 2] = [datagrams[at + 1], datagrams[at]]
        elif change == "drop" and rows > 1:
            del datagrams[at]
        elif change == "replay":
            datagrams += datagrams
        rx_before = peer_of(b, a).rx_bytes
        writes = tun_writes(b, glue(datagrams), a.endpoint, merges=merges)
        outcomes.append((writes, drops(b), peer_of(b, a).rx_bytes - rx_before))

    merged, reference = outcomes
    assert merged == reference


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_usual_batch_is_one_merged_write_when_the_native_loops_are_built(v6: bool) -> None:
    a, b = established_pair()
    packets = [flow_segment(a, b, row, v6=v6) for row in range(ROWS)]
    b.device.merges_for_tun = True

    receive(b, [one_receive(sent(a, packets))], a.endpoint)

    if batch_loops.NATIVE:
        assert batch_loops.coalesce is not None
        assert b.tun_writes == batch_loops.coalesce(packets)
    else:
        assert b.tun_writes == []
    assert drops(b) == {}


@pytest.mark.parametrize("refused", ["source", "destination"])
def test_a_merged_batch_the_node_must_not_take_is_dropped_whole(refused: str) -> None:
    # The rows of a mergeable batch share one header: the first one's verdict is each
    # one's, counted once per packet.
    a, b = established_pair()
    b.device.accept_only_to([b.v4.packed, b.v6.packed])
    b.device.merges_for_tun = True
    c = make_node(3)
    connect(b, c)
    packets = [
        bytes(
            IP(
                src=str(c.v4) if refused == "source" else str(a.v4),
                dst=SPOOFED_V4 if refused == "destination" else str(b.v4),
                flags="DF",
            )
            / TCP(sport=40000, dport=5201, seq=row * MSS, flags="A")
            / Raw(payload(MSS, row))
        )
        for row in range(ROWS)
    ]
    datagrams = sealed_rows(a, b, packets)

    assert receive(b, [one_receive(datagrams)], a.endpoint) == []

    assert b.tun_writes == []
    reason = (
        DropReason.SOURCE_NOT_ALLOWED if refused == "source" else DropReason.DESTINATION_NOT_LOCAL
    )
    assert drops(b) == {reason: ROWS}
