"""One connection's behaviour between two userspace stacks on the simulated wire:
simultaneous open, half close, resets (RFC 5961: exact, in window, out of window), SYN
on an open connection, retransmission after a loss (and Karn's rule), fast retransmit,
SACK recovery (a lost retransmission sent again without a timeout; after a timeout
only what the peer did not SACK), the zero window and its persist probe, window scaling, keepalives,
TIME-WAIT, a refused connection, misuse of the API."""

from collections.abc import Callable

import pytest
from netstack_wire import (
    A_V4,
    B_V4,
    PORT,
    Link,
    Wire,
    next_numbers,
    open_pair,
    payload,
    transfer,
)

from pilotif.netstack import Closed, Connection, LocalProtocolError, StackConfig, State
from pilotif.netstack.segment import TCP_RST, Segment, build_segment, parse_segment
from pilotif.packet.ip import TCP_ACK, TCP_SYN


def _segments(wire: Wire, direction: str) -> list[Segment]:
    """Start recording what goes `direction`; the list fills as the wire runs."""
    seen: list[Segment] = []
    previous = wire.tap

    def tap(way: str, packet: bytes) -> bool:
        if way == direction:
            seen.append(parse_segment(packet))
        return previous(way, packet) if previous else True

    wire.tap = tap
    return seen


def _closed_reasons(events: list[object]) -> list[str]:
    return [e.reason for e in events if isinstance(e, Closed)]


def _forge(wire: Wire, client: Connection, seq_offset: int, flags: int) -> bytes:
    """A segment from the client's 4-tuple with a sequence number `seq_offset` from where
    the client's sending goes on (what the server expects next, once the client's segments
    arrived); its ACK is the client's last."""
    expected, ack = next_numbers(wire, "ab")
    seq = (expected + seq_offset) % 2**32
    return build_segment(
        client.local[0], client.remote[0], (client.local[1], client.remote[1]), seq, ack, flags,
        1000,
    )  # fmt: skip


def test_simultaneous_open_makes_one_connection() -> None:
    wire = Wire()
    a = wire.a.connect(B_V4, 5000, wire.now, local_port=6000)
    b = wire.b.connect(A_V4, 6000, wire.now, local_port=5000)
    wire.run(lambda: a.state is State.ESTABLISHED and b.state is State.ESTABLISHED)
    data = payload(100_000, 1)
    assert transfer(wire, a, b, data) == data


def test_half_close_lets_the_other_side_keep_sending() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    client.close()
    wire.run(lambda: server.peer_closed and client.state is State.FIN_WAIT_2)
    assert server.state is State.CLOSE_WAIT
    data = payload(300_000, 2)
    assert transfer(wire, server, client, data) == data


def test_reset_with_the_exact_sequence_closes_the_connection() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    wire.inject("ab", _forge(wire, client, 0, TCP_RST))
    assert server.state is State.CLOSED
    assert _closed_reasons(wire.b.take_events()) == ["reset"]


def test_reset_inside_the_window_is_challenged_not_obeyed() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    answers = _segments(wire, "ba")
    wire.inject("ab", _forge(wire, client, 1000, TCP_RST))
    wire.step()
    assert server.state is State.ESTABLISHED
    assert wire.b.counters["challenge_ack"] == 1
    assert [s.flags for s in answers] == [TCP_ACK]
    # the genuine client gets the challenge ACK and the connection still works
    data = payload(50_000, 3)
    assert transfer(wire, client, server, data) == data


def test_reset_outside_the_window_is_dropped_silently() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    answers = _segments(wire, "ba")
    wire.inject("ab", _forge(wire, client, 2**30, TCP_RST))
    wire.step()
    assert server.state is State.ESTABLISHED
    assert wire.b.counters["rst_out_of_window"] == 1
    assert answers == []


def test_syn_on_an_open_connection_gets_a_challenge_ack() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    answers = _segments(wire, "ba")
    wire.inject("ab", _forge(wire, client, 5, TCP_SYN))
    wire.step()
    assert server.state is State.ESTABLISHED
    assert [s.flags for s in answers] == [TCP_ACK]
    assert wire.b.counters["challenge_ack"] == 1


def test_challenge_acks_are_rate_limited() -> None:
    config = StackConfig(challenge_acks_per_s=3)
    wire = Wire(config_b=config)
    client, _server = open_pair(wire)
    answers = _segments(wire, "ba")
    for _ in range(10):
        wire.inject("ab", _forge(wire, client, 5, TCP_SYN))
    wire.step()
    assert wire.b.counters["challenge_ack"] == 10
    assert wire.b.counters["challenge_budget_spent"] == 7
    assert len(answers) <= 3


def test_lost_segment_is_retransmitted_and_not_timed_karn() -> None:
    wire = Wire(link=Link(delay_s=0.01))
    client, server = open_pair(wire)
    handshake_srtt = client.rto.srtt_s
    assert handshake_srtt is not None and handshake_srtt == pytest.approx(0.02, abs=0.005)
    dropped: list[bytes] = []

    def drop_first_data(direction: str, packet: bytes) -> bool:
        if direction == "ab" and parse_segment(packet).payload and not dropped:
            dropped.append(packet)
            return False
        return True

    wire.tap = drop_first_data
    client.send(b"x" * 500)
    wire.run(lambda: server.readable_bytes == 500 and client.bytes_in_flight == 0)
    assert client.timeouts == 1 and client.retransmissions == 1
    # Karn: the ACK of the retransmission says nothing of the round trip (it would
    # otherwise measure the timeout too)
    assert client.rto.srtt_s == pytest.approx(handshake_srtt, abs=0.005)


def _drop_data_segments(indexes: set[int]) -> tuple[list[int], object]:
    count = [0]

    def tap(direction: str, packet: bytes) -> bool:
        if direction != "ab" or not parse_segment(packet).payload:
            return True
        count[0] += 1
        return count[0] not in indexes

    return count, tap


@pytest.mark.parametrize("sack", [True, False])
def test_one_loss_is_repaired_by_fast_retransmit_before_any_timeout(sack: bool) -> None:
    config = StackConfig(sack=sack)
    wire = Wire(link=Link(delay_s=0.01), config_a=config, config_b=config)
    client, server = open_pair(wire)
    _count, tap = _drop_data_segments({5})
    wire.tap = tap  # type: ignore[assignment]
    data = payload(200_000, 4)
    assert transfer(wire, client, server, data) == data
    assert client.timeouts == 0
    assert client.retransmissions == 1


def test_sack_repairs_several_holes_in_one_window_without_a_timeout() -> None:
    wire = Wire(link=Link(delay_s=0.02))
    client, server = open_pair(wire)
    _count, tap = _drop_data_segments({4, 6, 8, 10})
    wire.tap = tap  # type: ignore[assignment]
    data = payload(200_000, 5)
    blocks: list[Segment] = _segments(wire, "ba")
    assert transfer(wire, client, server, data) == data
    assert client.timeouts == 0
    assert client.retransmissions == 4
    assert any(len(s.sack_blocks) >= 2 for s in blocks)


def _seq_tap(wire: Wire, lose: Callable[[int, int], bool]) -> list[int]:
    """Sequence numbers of every data segment A sends (in order, lost ones too);
    `lose(seq, how many times before)` drops one."""
    seqs: list[int] = []

    def tap(direction: str, packet: bytes) -> bool:
        segment = parse_segment(packet)
        if direction != "ab" or not segment.payload:
            return True
        earlier = seqs.count(segment.seq)
        seqs.append(segment.seq)
        return not lose(segment.seq, earlier)

    wire.tap = tap
    return seqs


def test_a_lost_retransmission_is_sent_again_without_a_timeout() -> None:
    wire = Wire(link=Link(delay_s=0.02))
    client, server = open_pair(wire)
    hole: list[int] = []

    def lose(seq: int, earlier: int) -> bool:
        if not hole and len(seqs) == 40:
            hole.append(seq)
        return bool(hole) and seq == hole[0] and earlier < 2  # it, and its retransmission

    seqs = _seq_tap(wire, lose)
    data = payload(2_000_000, 14)
    assert transfer(wire, client, server, data) == data
    assert seqs.count(hole[0]) == 3
    assert client.timeouts == 0


def test_a_lost_retransmission_that_no_ack_follows_goes_again_before_the_timeout() -> None:
    wire = Wire(link=Link(delay_s=0.02, rate_bytes_per_s=1e6))  # an ACK for each segment
    client, server = open_pair(wire)
    hole: list[int] = []

    def lose(seq: int, earlier: int) -> bool:
        if not hole and len(seqs) == 8:
            hole.append(seq)
        return bool(hole) and seq == hole[0] and earlier < 2

    seqs = _seq_tap(wire, lose)
    data = payload(10 * client.mss, 16)  # nothing follows the retransmission
    assert transfer(wire, client, server, data) == data
    assert seqs.count(hole[0]) == 3
    assert client.timeouts == 0


def test_after_a_timeout_only_what_the_peer_lacks_goes_again() -> None:
    wire = Wire(link=Link(delay_s=0.02))
    client, server = open_pair(wire)
    holes: list[int] = []

    def lose(seq: int, earlier: int) -> bool:
        if len(seqs) in (4, 8) and len(holes) < 2 and seq not in holes:
            holes.append(seq)
        return seq in holes and client.timeouts == 0  # lost until the timer expires

    seqs = _seq_tap(wire, lose)
    data = payload(10 * client.mss, 15)
    assert transfer(wire, client, server, data) == data
    assert client.timeouts == 1
    assert {seq for seq in seqs if seqs.count(seq) > 1} == set(holes), "SACKed data not sent again"


def test_zero_window_stalls_the_sender_and_the_persist_probe_resumes_it() -> None:
    small = StackConfig(receive_buffer_bytes=16_384)
    wire = Wire(link=Link(delay_s=0.01), config_b=small)
    client, server = open_pair(wire)
    data = payload(100_000, 6)
    taken = client.send(data)
    wire.settle(2.0)
    assert server.readable_bytes == 16_384
    assert client.bytes_in_flight <= 1  # stalled, probing with at most one byte
    # the window update that reading makes is lost: only a probe can find the window open
    lost: list[Segment] = []

    def lose_the_update(direction: str, packet: bytes) -> bool:
        segment = parse_segment(packet)
        if direction == "ba" and not segment.payload and not lost:
            lost.append(segment)
            return False
        return True

    wire.tap = lose_the_update
    got = bytearray(server.receive())
    timeouts_before = client.timeouts
    wire.run(
        lambda: len(got) == taken,
        app=lambda: got.extend(server.receive()),
    )
    assert bytes(got) == data[:taken]
    assert lost and lost[0].window > 0
    assert client.timeouts > timeouts_before  # the persist timer found the window open


def test_window_scaling_lets_more_than_64_kib_fly() -> None:
    link = Link(delay_s=0.05, rate_bytes_per_s=50e6)
    wire = Wire(link=link)
    client, server = open_pair(wire)
    data = payload(3_000_000, 7)
    most = [0]

    def watch() -> None:
        most[0] = max(most[0], client.bytes_in_flight)

    wire.tap = lambda d, p: (watch(), True)[1]
    assert transfer(wire, client, server, data) == data
    assert most[0] > 4 * 65_535


def test_without_window_scaling_at_most_64_kib_fly() -> None:
    config = StackConfig(window_scale=False)
    wire = Wire(link=Link(delay_s=0.05, rate_bytes_per_s=50e6), config_b=config)
    client, server = open_pair(wire)
    most = [0]
    wire.tap = lambda d, p: (most.__setitem__(0, max(most[0], client.bytes_in_flight)), True)[1]
    data = payload(1_000_000, 8)
    assert transfer(wire, client, server, data) == data
    assert most[0] <= 65_535


def test_keepalive_gives_up_on_a_silent_peer() -> None:
    config = StackConfig(keepalive_idle_s=10.0, keepalive_interval_s=1.0, keepalive_probes=3)
    wire = Wire(config_a=config)
    client, _server = open_pair(wire)
    wire.settle(5.0)
    wire.tap = lambda direction, packet: direction == "ab"  # the peer went silent
    probes = _segments(wire, "ab")
    wire.run(lambda: client.state is State.CLOSED, limit_s=60)
    assert _closed_reasons(wire.a.take_events()) == ["timeout"]
    assert [s.flags & TCP_RST for s in probes] == [0, 0, 0, TCP_RST]  # 3 probes, a reset


def test_keepalive_keeps_an_idle_connection_whose_peer_answers() -> None:
    config = StackConfig(keepalive_idle_s=10.0, keepalive_interval_s=1.0, keepalive_probes=3)
    wire = Wire(config_a=config)
    client, _server = open_pair(wire)
    probes = _segments(wire, "ab")
    wire.settle(100.0)
    assert client.state is State.ESTABLISHED
    assert len(probes) >= 9


def test_time_wait_acks_a_retransmitted_fin_and_ends() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    lost: list[int] = []

    def drop_last_ack(direction: str, packet: bytes) -> bool:
        segment = parse_segment(packet)
        if direction == "ab" and client.state is State.TIME_WAIT and not lost:
            lost.append(segment.flags)
            return False
        return True

    wire.tap = drop_last_ack
    client.close()
    wire.run(lambda: server.peer_closed)
    server.close()
    wire.run(lambda: server.state is State.CLOSED)
    assert lost == [TCP_ACK]
    assert server.timeouts >= 1  # the FIN went again and the new ACK ended LAST-ACK
    assert client.state is State.TIME_WAIT
    wire.settle(wire.a.config.time_wait_s + 2)
    assert client.state is State.CLOSED


def test_connection_to_a_closed_port_is_refused() -> None:
    wire = Wire()
    client = wire.a.connect(B_V4, 9, wire.now)
    wire.run(lambda: client.state is State.CLOSED)
    assert _closed_reasons(wire.a.take_events()) == ["refused"]
    assert wire.b.counters["no_connection"] == 1


def test_unanswered_syn_times_out() -> None:
    wire = Wire()
    wire.tap = lambda direction, packet: direction == "ba"
    client = wire.a.connect(B_V4, PORT, wire.now)
    wire.run(lambda: client.state is State.CLOSED, limit_s=1000)
    assert _closed_reasons(wire.a.take_events()) == ["timeout"]
    assert client.timeouts == wire.a.config.syn_retries + 1


def test_abort_resets_the_peer() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    client.abort()
    wire.run(lambda: server.state is State.CLOSED)
    assert _closed_reasons(wire.a.take_events()) == ["aborted"]
    assert _closed_reasons(wire.b.take_events()) == ["reset"]


def test_sending_after_close_is_the_applications_error() -> None:
    wire = Wire()
    client, _server = open_pair(wire)
    client.close()
    with pytest.raises(LocalProtocolError):
        client.send(b"late")


def test_a_merged_segment_larger_than_the_mss_is_taken_whole() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    data = payload(20_000, 9)
    seq, ack = next_numbers(wire, "ab")
    big = build_segment(
        client.local[0], client.remote[0], (client.local[1], client.remote[1]), seq, ack,
        TCP_ACK, 0xFFFF, payload=data,
    )  # fmt: skip
    wire.inject("ab", big)
    assert server.receive() == data


def _hold(wire: Wire, direction: str) -> list[bool]:
    """From now on drop what goes `direction` (while the returned flag is set)."""
    holding = [True]
    wire.tap = lambda way, packet: not (way == direction and holding[0])
    return holding


def _server_in(wire: Wire, state: State) -> tuple[Connection, Connection]:
    """(server at B in `state`, client at A): the server's peer is held silent where the
    state needs it."""
    if state is State.SYN_RECEIVED:
        wire.b.listen(PORT)
        sent = [0]

        def syn_only(way: str, packet: bytes) -> bool:
            sent[0] += way == "ab"
            return way == "ba" or sent[0] == 1  # the client's final ACK never arrives

        wire.tap = syn_only
        client = wire.a.connect(B_V4, PORT, wire.now)
        wire.run(lambda: client.state is State.ESTABLISHED)
        (server,) = wire.b._connections.values()
        return server, client
    client, server = open_pair(wire)
    if state is State.FIN_WAIT_1:
        _hold(wire, "ab")
        server.close()
        wire.settle(0.05)
    elif state is State.FIN_WAIT_2:
        server.close()
        wire.run(lambda: server.state is State.FIN_WAIT_2)
    elif state is State.CLOSE_WAIT:
        client.close()
        wire.run(lambda: server.state is State.CLOSE_WAIT)
    elif state is State.LAST_ACK:
        client.close()
        wire.run(lambda: server.state is State.CLOSE_WAIT)
        _hold(wire, "ab")
        server.close()
        wire.settle(0.05)
    elif state is State.CLOSING:
        fins = [0]

        def first_fin_only(way: str, packet: bytes) -> bool:
            if way != "ab":
                return True
            fins[0] += 1
            return fins[0] == 1  # the client's FIN passes, its ACK of ours does not

        wire.tap = first_fin_only
        client.close()
        server.close()
        wire.settle(0.05)
    elif state is State.TIME_WAIT:
        server.close()
        wire.run(lambda: client.peer_closed)
        client.close()
        wire.run(lambda: server.state is State.TIME_WAIT)
    return server, client


@pytest.mark.parametrize(
    "state",
    [
        State.SYN_RECEIVED, State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2,
        State.CLOSE_WAIT, State.CLOSING, State.LAST_ACK, State.TIME_WAIT,
    ],
)  # fmt: skip
def test_reset_in_every_state(state: State) -> None:
    wire = Wire()
    server, client = _server_in(wire, state)
    assert server.state is state
    wire.tap = lambda way, packet: False  # nothing else reaches either side
    wire.inject("ab", _forge(wire, client, 2**30, TCP_RST))
    assert server.state is state  # far outside the window: ignored
    wire.inject("ab", _forge(wire, client, 0, TCP_RST))
    assert server.state is State.CLOSED
    assert _closed_reasons(wire.b.take_events())[-1:] == ["reset"]


def test_reset_answering_our_syn_refuses_and_a_blind_one_does_not() -> None:
    wire = Wire()
    wire.tap = lambda way, packet: way == "ab"  # B's answers never arrive
    client = wire.a.connect(B_V4, PORT, wire.now)
    wire.step()
    ports = (client.remote[1], client.local[1])
    blind = build_segment(B_V4.packed, A_V4.packed, ports, 0, 12345, TCP_RST | TCP_ACK, 0)
    wire.inject("ba", blind)
    assert client.state is State.SYN_SENT
    right_ack = next_numbers(wire, "ab")[0]  # just after our SYN
    refusal = build_segment(B_V4.packed, A_V4.packed, ports, 0, right_ack, TCP_RST | TCP_ACK, 0)
    wire.inject("ba", refusal)
    assert client.state is State.CLOSED
    assert _closed_reasons(wire.a.take_events()) == ["refused"]


def test_answers_to_segments_outside_the_window_share_the_budget() -> None:
    wire = Wire(config_b=StackConfig(challenge_acks_per_s=3))
    client, _server = open_pair(wire)
    answers: list[bytes] = []
    for _ in range(10):
        wire.inject("ab", _forge(wire, client, 2**30, TCP_ACK))
        answers += wire.b.poll(wire.now)  # each polled on its own: no answers coalesced
    assert wire.b.counters["out_of_window"] == 10
    assert len(answers) == 3
