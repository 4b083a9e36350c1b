"""The userspace stack's parts alone: the state table, segments built and parsed (IPv4,
IPv6, options, SACK blocks), sequence numbers across the 2**32 wrap, the RFC 6298
estimator, NewReno's and the delivery-rate model's windows, the SACK scoreboard and the
out-of-order queue."""

from ipaddress import IPv4Address, IPv6Address

import pytest
from netstack_wire import A_V4, A_V6, B_V4, B_V6, Wire, open_pair, payload, transfer

from pilotif.netstack import Stack
from pilotif.netstack.congestion import (
    BANDWIDTH_WINDOW_ROUNDS,
    MIN_RTT_WINDOW_S,
    DeliveryRate,
    NewReno,
)
from pilotif.netstack.reassembly import OutOfOrder
from pilotif.netstack.rto import RtoEstimator
from pilotif.netstack.scoreboard import Scoreboard
from pilotif.netstack.segment import (
    SegmentDrop,
    build_segment,
    parse_segment,
    sack_option,
    syn_options,
    unwrap,
)
from pilotif.netstack.tcp_state import TRANSITIONS, Event, State, transition
from pilotif.packet.ip import TCP_ACK, TCP_SYN


def test_every_open_state_has_a_way_out_on_reset_abort_and_timeout() -> None:
    for state in State:
        if state in (State.CLOSED,):
            continue
        for event in (Event.RST, Event.ABORT, Event.TIMEOUT):
            row = transition(state, event)
            assert row is not None and row.next_state is State.CLOSED, (state, event)
    assert transition(State.CLOSED, Event.FIN) is None
    assert all(row.next_state in State for row in TRANSITIONS.values())


@pytest.mark.parametrize(("source", "destination"), [(A_V4, B_V4), (A_V6, B_V6)])
def test_segment_round_trip_with_options(
    source: IPv4Address | IPv6Address, destination: IPv4Address | IPv6Address
) -> None:
    options = syn_options(1380, 7, True)
    packet = build_segment(
        source.packed, destination.packed, (1234, 80), 2**32 - 1, 5, TCP_SYN | TCP_ACK, 512,
        options, b"data",
    )  # fmt: skip
    segment = parse_segment(packet)
    assert (segment.source, segment.destination) == (source.packed, destination.packed)
    assert (segment.source_port, segment.destination_port) == (1234, 80)
    assert (segment.seq, segment.ack, segment.window) == (2**32 - 1, 5, 512)
    assert (segment.mss, segment.window_scale, segment.sack_permitted) == (1380, 7, True)
    assert bytes(segment.payload) == b"data"
    blocks = [(10, 20), (2**32 - 5, 3)]
    sacked = parse_segment(
        build_segment(A_V4.packed, B_V4.packed, (1, 2), 0, 0, TCP_ACK, 0, sack_option(blocks))
    )
    assert list(sacked.sack_blocks) == blocks


def test_malformed_options_are_ignored_not_fatal() -> None:
    options = bytes((2, 4, 5, 0xB4, 3, 9, 1, 0))  # MSS, then a window scale that overruns
    segment = parse_segment(build_segment(A_V4.packed, B_V4.packed, (1, 2), 0, 0, 0, 0, options))
    assert segment.mss == 1460 and segment.window_scale is None


def test_a_packet_shorter_than_its_headers_is_refused() -> None:
    packet = build_segment(A_V4.packed, B_V4.packed, (1, 2), 0, 0, 0, 0)
    with pytest.raises(SegmentDrop) as refused:
        parse_segment(packet[:30])
    assert refused.value.reason == "truncated"


def test_unwrap_takes_the_nearest_offset_across_the_wrap() -> None:
    base = 2**32 - 10
    assert unwrap((base + 5) % 2**32, base, 0) == 5
    assert unwrap((base + 20) % 2**32, base, 15) == 20
    assert unwrap((base - 3) % 2**32, base, 0) == -3


def test_transfer_across_the_sequence_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Stack, "_isn", lambda self, key, now: 2**32 - 50_000)
    wire = Wire()
    client, server = open_pair(wire)
    data = payload(300_000, 1)
    assert transfer(wire, client, server, data) == data
    assert transfer(wire, server, client, data) == data


def test_rto_follows_rfc_6298_and_backs_off() -> None:
    rto = RtoEstimator(initial_s=1.0, min_s=0.2, max_s=60.0)
    assert rto.rto_s == 1.0
    rto.sample(0.5)
    assert rto.srtt_s == 0.5 and rto.rttvar_s == 0.25 and rto.rto_s == pytest.approx(1.5)
    rto.back_off()
    rto.back_off()
    assert rto.rto_s == pytest.approx(6.0)
    rto.sample(0.01)
    assert rto.backoffs == 0 and rto.rto_s >= 0.2
    for _ in range(20):
        rto.back_off()
    assert rto.rto_s == 60.0


def test_newreno_grows_halves_and_collapses() -> None:
    cc = NewReno(mss=1000)
    assert cc.cwnd == 10_000
    cc.on_ack(5000)
    assert cc.cwnd == 12_000  # slow start: at most two segments per ACK
    cc.on_loss(flight=20_000)
    assert cc.cwnd == cc.ssthresh == 10_000
    cc.on_ack(10_000)
    assert cc.cwnd == 11_000  # congestion avoidance: one segment per window
    cc.on_timeout(flight=20_000)
    assert cc.cwnd == 1000 and cc.ssthresh == 10_000


class _Path:
    """A path a DeliveryRate controller measures: the time and the bytes delivered."""

    def __init__(self, cc: DeliveryRate) -> None:
        self.cc = cc
        self.now = 0.0
        self.delivered = 0
        cc.on_delivered(0, 0, 0.0)  # the first ACK starts the first round

    def rounds(self, count: int, rate: float, rtt_s: float, ahead: int = 0) -> None:
        """`count` round trips of `rtt_s` that each deliver `rate` bytes a second, all
        that was sent (and `ahead` bytes more sent)."""
        for _ in range(count):
            self.now += rtt_s
            self.delivered += int(rate * rtt_s)
            self.cc.on_rtt(rtt_s, self.now)
            self.cc.on_delivered(self.delivered, self.delivered + ahead, self.now)


def test_delivery_rate_window_is_twice_the_bandwidth_delay_product() -> None:
    cc = DeliveryRate(mss=1000)
    assert cc.cwnd == 10_000
    path = _Path(cc)
    path.rounds(3, rate=10e6, rtt_s=0.1)
    assert cc.cwnd == pytest.approx(2 * 10e6 * 0.1, rel=0.01)
    cc.on_loss(flight=cc.cwnd)  # random loss is not congestion
    cc.on_recovery_end()
    assert cc.cwnd == pytest.approx(2e6, rel=0.01)
    path.rounds(BANDWIDTH_WINDOW_ROUNDS - 1, rate=1e6, rtt_s=0.1)
    assert cc.cwnd == pytest.approx(2e6, rel=0.01), "the highest rate of the last rounds"
    path.rounds(1, rate=1e6, rtt_s=0.1)
    assert cc.cwnd == pytest.approx(2e5, rel=0.01), "the 10 MB/s rounds left the window"


def test_delivery_rate_keeps_the_lowest_rtt_for_its_window_only() -> None:
    cc = DeliveryRate(mss=1000)
    path = _Path(cc)
    path.rounds(1, rate=10e6, rtt_s=0.05)
    path.rounds(5, rate=10e6, rtt_s=0.2)
    assert cc.cwnd == pytest.approx(2 * 10e6 * 0.05, rel=0.01), "a queue does not grow it"
    path.rounds(int(MIN_RTT_WINDOW_S / 0.2) + 1, rate=10e6, rtt_s=0.2)
    assert cc.cwnd == pytest.approx(2 * 10e6 * 0.2, rel=0.01)


def test_delivery_rate_after_a_timeout_one_segment_then_the_model() -> None:
    cc = DeliveryRate(mss=1000)
    path = _Path(cc)
    path.rounds(3, rate=10e6, rtt_s=0.1, ahead=2_000_000)  # the last round: a window out
    sent = path.delivered + 2_000_000
    cc.on_delivered(path.delivered + 500_000, sent, path.now)  # SACKed
    cc.on_timeout(flight=2_000_000)
    assert cc.cwnd == 1000
    # The timeout forgot the SACKs: the next ACKs say less was delivered.
    cc.on_delivered(path.delivered, sent, path.now + 0.3)
    assert cc.cwnd == 1000
    cc.on_ack(1000)  # the retransmission arrived
    assert cc.cwnd == pytest.approx(2e6, rel=0.01)


def test_delivery_rate_never_below_the_initial_window() -> None:
    cc = DeliveryRate(mss=1000)
    _Path(cc).rounds(3, rate=1000, rtt_s=0.1)
    assert cc.cwnd == 10_000


def test_scoreboard_says_what_the_peer_lacks_when_going_back() -> None:
    board = Scoreboard(max_ranges=8)
    board.add(30, 40, una=10, snd_max=100)
    board.add(50, 60, una=10, snd_max=100)
    assert board.lacking(10, 100) == (10, 30)
    assert board.lacking(30, 100) == (40, 50)
    assert board.lacking(55, 100) == (60, 100)
    assert board.lacking(60, 45) == (60, 60), "nothing up to the end"
    assert board.sacked_below(35) == 5 and board.sacked_below(100) == 20


def test_scoreboard_merges_and_finds_holes() -> None:
    board = Scoreboard(max_ranges=8)
    board.add(30, 40, una=10, snd_max=100)
    board.add(50, 60, una=10, snd_max=100)
    board.add(38, 52, una=10, snd_max=100)
    board.add(90, 200, una=10, snd_max=100)  # beyond what was sent: ignored
    assert board.ranges == [(30, 60)]
    assert board.holes(10) == [(10, 30)]
    board.advance(35)
    assert board.ranges == [(35, 60)] and board.sacked_bytes == 25


def test_out_of_order_queue_merges_and_releases_in_order() -> None:
    queue = OutOfOrder(max_ranges=2)
    assert queue.add(20, b"cc")
    assert queue.add(10, b"aa")
    assert not queue.add(30, b"dd")  # a third range: refused
    assert queue.add(12, b"bbbbbbbb")  # fills 12..20: one range 10..22
    assert len(queue) == 1 and queue.sack_blocks(4) == [(10, 22)]
    assert queue.pop_ready(10) == (10, bytearray(b"aabbbbbbbbcc"))
    assert queue.bytes == 0
