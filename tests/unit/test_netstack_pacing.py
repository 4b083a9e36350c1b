"""Pacing (pilotif/netstack/pacing.py) and the delivery-rate sender that uses it: what
leaves over an interval stays within the pacing rate and its burst, nothing waits
while no bandwidth is measured, and what is held back has its timer."""

from dataclasses import replace

import pytest
from netstack_wire import Link, Wire, open_pair, payload

from pilotif.netstack import Connection, StackConfig
from pilotif.netstack.congestion import PACING_MIN_RTT_S, DeliveryRate, NewReno
from pilotif.netstack.pacing import MIN_TRAIN_SEGMENTS, PACING_CREDIT_S, PACING_TRAIN_S, Pacer
from pilotif.netstack.segment import parse_segment

MSS = 1000
RATE = 1_000_000.0
"""Bytes a second."""
STEP_S = 0.0001
STEPS_AT_ONE_INSTANT = 1000
"""More steps of the wire than this without time moving: the sender spins."""


def test_the_pacer_releases_the_rate_and_no_more_than_its_credit() -> None:
    pacer = Pacer()
    released = 0
    now = 0.0
    bound = RATE * PACING_CREDIT_S
    for _ in range(10_000):  # 1 s, looked at every 0.1 ms
        allowed = pacer.allowance(1 << 20, MSS, RATE, now)
        assert allowed % MSS == 0
        assert released + allowed <= RATE * now + bound
        pacer.spend(allowed)
        released += allowed
        now += STEP_S
    assert released >= RATE * (now - STEP_S) - RATE * PACING_TRAIN_S  # it keeps up


def test_a_release_is_a_train_of_at_least_two_segments() -> None:
    pacer = Pacer()
    slow = 100.0  # 100 bytes a second: a millisecond of it is no segment
    assert pacer.allowance(1 << 20, MSS, slow, 0.0) == MIN_TRAIN_SEGMENTS * MSS
    assert pacer.allowance(MSS // 2, MSS, RATE, 0.0) == MSS // 2  # all that waits


def test_what_is_held_back_has_a_release_time_and_goes_then() -> None:
    pacer = Pacer()
    first = pacer.allowance(1 << 20, MSS, RATE, 0.0)
    pacer.spend(first)
    assert pacer.allowance(1 << 20, MSS, RATE, 0.0) == 0
    assert pacer.release_at is not None and pacer.release_at > 0.0
    release_at = pacer.release_at
    assert pacer.allowance(1 << 20, MSS, RATE, release_at) >= MSS
    assert pacer.release_at is None


def test_bytes_sent_ahead_of_the_credit_hold_the_next_release_back() -> None:
    """What left unpaced (a fast retransmission) is charged: the credit goes below zero,
    and nothing (never a negative length) may go until it has come back."""
    pacer = Pacer()
    pacer.spend(pacer.allowance(1 << 20, MSS, RATE, 0.0))
    pacer.spend(MSS // 2)  # a retransmission sent at once
    assert pacer.allowance(1 << 20, MSS, RATE, 0.0) == 0
    assert pacer.release_at is not None
    assert pacer.release_at >= (MSS // 2 + MIN_TRAIN_SEGMENTS * MSS) / RATE


def test_no_rate_means_no_pacing() -> None:
    pacer = Pacer()
    for now in (0.0, 0.0, 0.001):
        assert pacer.allowance(10 << 20, MSS, 0.0, now) == 10 << 20
        pacer.spend(10 << 20)
        assert pacer.release_at is None


def test_only_the_delivery_rate_controller_paces() -> None:
    assert NewReno(MSS).pacing_rate == 0.0
    model = DeliveryRate(MSS)
    assert model.pacing_rate == 0.0  # nothing measured: start-up is not held back
    model.on_rtt(0.1, 0.0)
    for round_ in range(1, 20):
        model.on_delivered(round_ * 100_000, (round_ + 1) * 100_000, round_ * 0.1)
    assert model.bandwidth == pytest.approx(1e6)
    assert 0.5 * model.bandwidth < model.pacing_rate < 3 * model.bandwidth


def _measured(min_rtt_s: float) -> DeliveryRate:
    """A model that measured 1 MB/s over rounds of `min_rtt_s`."""
    model = DeliveryRate(MSS)
    model.on_rtt(min_rtt_s, 0.0)
    for round_ in range(1, 20):
        model.on_delivered(round_ * 100_000, (round_ + 1) * 100_000, round_ * 0.1)
    return model


def test_a_path_shorter_than_the_threshold_is_not_paced() -> None:
    """On a LAN the bandwidth measured is what the node's CPU managed: pacing at it would
    hold the sender to its own last figure. A longer path is paced as before."""
    assert _measured(0.5 * PACING_MIN_RTT_S).pacing_rate == 0.0
    assert _measured(0.5 * PACING_MIN_RTT_S).bandwidth == pytest.approx(1e6)  # still measured
    assert _measured(PACING_MIN_RTT_S).pacing_rate > 0.0
    assert _measured(0.05).pacing_rate > 0.0


def test_a_round_the_application_limited_counts_only_if_it_beat_the_bandwidth() -> None:
    """Small requests measure the application's rate, not the path's: 20 such rounds at
    1 kB/s leave the 1 MB/s measured before (they would have filled the 10-round window),
    and one that went faster than the estimate still raises it."""
    model = _measured(0.05)
    window = model.cwnd
    now = 2.0
    delivered = 2_000_000
    for _ in range(20):
        model.on_app_limited()
        now += 0.1
        delivered += 100
        model.on_delivered(delivered, delivered, now)
    assert model.bandwidth == pytest.approx(1e6)
    assert model.cwnd == window
    model.on_app_limited()
    model.on_delivered(delivered + 300_000, delivered + 300_000, now + 0.1)
    assert model.bandwidth == pytest.approx(3e6)


# -- the sender over the wire ---------------------------------------------------------
_PATH = Link(delay_s=0.05, rate_bytes_per_s=10e6)
_CONFIG = StackConfig(
    congestion="delivery_rate",
    large_segments=True,
    send_buffer_bytes=4 << 20,
    receive_buffer_bytes=4 << 20,
)


def _sent_bytes(log: list[tuple[float, int]]) -> Wire:
    """A wire over _PATH whose data payloads from a to b go to `log` as (time, bytes)."""
    wire = Wire(link=_PATH, config_a=_CONFIG, config_b=_CONFIG)

    def tap(direction: str, packet: bytes) -> bool:
        if direction == "ab":
            log.append((wire.now, len(parse_segment(packet, checksums=False).payload)))
        return True

    wire.tap = tap
    return wire


def _drain(wire: Wire, client: Connection, server: Connection, size: int) -> None:
    """Send `size` bytes from client to server, read them all, wait for the last ACK."""
    data = payload(size, 3)
    sent = received = 0

    def app() -> None:
        nonlocal sent, received
        if sent < len(data):
            sent += client.send(memoryview(data)[sent : sent + 256 * 1024])
        received += len(server.receive())

    wire.run(lambda: received == size, app=app)
    wire.run(lambda: client.bytes_in_flight == 0)


def test_a_burst_written_after_a_pause_leaves_at_the_pacing_rate() -> None:
    """The window is open (the model's, two bandwidth-delay products) and the application
    writes a megabyte at once: unpaced, the whole window would leave in one poll; paced,
    a train leaves, the connection's timer is set for the next, and over the round trip
    that no ACK interrupts what leaves stays within the rate."""
    log: list[tuple[float, int]] = []
    wire = _sent_bytes(log)
    client, server = open_pair(wire)
    _drain(wire, client, server, 3_000_000)  # the path's bandwidth is measured
    wire.settle(1.0)
    rate = client.cc.pacing_rate
    assert rate > 0 and client.cc.cwnd > 10 * PACING_CREDIT_S * rate
    log.clear()
    start = wire.now
    assert client.send(payload(1_000_000, 4)) == 1_000_000
    wire.step(until_s=start)
    first = sum(n for t, n in log if t == start)
    assert 0 < first <= max(rate * PACING_CREDIT_S, MIN_TRAIN_SEGMENTS * client.mss)
    deadline = client.deadline()
    assert deadline is not None and deadline < start + PACING_CREDIT_S  # the next train
    window_s = 0.09  # no ACK comes back before 0.1 s
    wire.settle(window_s)
    sent = sum(n for t, n in log if t <= start + window_s)
    assert sent <= rate * window_s + rate * PACING_CREDIT_S
    assert sent >= 0.5 * rate * window_s  # and it keeps going: no stall


def test_the_first_window_is_not_held_back() -> None:
    """No bandwidth is measured yet: the initial window leaves at once, as unpaced."""
    log: list[tuple[float, int]] = []
    wire = _sent_bytes(log)
    client, _ = open_pair(wire)
    log.clear()
    start = wire.now
    client.send(payload(1_000_000, 5))
    wire.step(until_s=start)
    assert sum(n for t, n in log if t == start) == client.cc.cwnd


def test_time_moves_on_while_a_paced_sender_waits() -> None:
    """The credit, summed in floating point, can fall short of a segment by a rounding
    error; the release it waits for must still be later than now (it once came due at
    the same instant forever, on this path at 0.3 s)."""
    link = Link(delay_s=0.05, loss=0.01, rate_bytes_per_s=100e6)
    config = replace(_CONFIG, large_segments=False)
    wire = Wire(link=link, config_a=config, config_b=config, seed=5)
    client, server = open_pair(wire)
    data = payload(3_000_000, 6)
    sent = received = 0
    same_instant = 0
    while received < len(data):
        if sent < len(data):
            sent += client.send(memoryview(data)[sent : sent + 256 * 1024])
        received += len(server.receive())
        before = wire.now
        assert wire.step()
        same_instant = same_instant + 1 if wire.now == before else 0
        assert same_instant < STEPS_AT_ONE_INSTANT, f"time stands still at {wire.now}"


def test_a_large_answer_after_small_requests_goes_at_the_paths_rate() -> None:
    """An agent's pattern over a long path: a transfer, then small requests and answers
    (each round carries 64 bytes: the application's rate), then a megabyte. The
    megabyte leaves at the path's bandwidth; taking the small rounds as the path's, the
    sender paced it at ~800 bytes a second and it took 6.4 s."""
    log: list[tuple[float, int]] = []
    wire = _sent_bytes(log)
    client, server = open_pair(wire)
    _drain(wire, client, server, 3_000_000)
    assert isinstance(client.cc, DeliveryRate)
    bulk = client.cc.bandwidth
    for _ in range(30):
        client.send(b"q" * 64)
        wire.run(lambda: server.readable_bytes >= 64)
        server.send(server.receive())
        wire.run(lambda: client.readable_bytes >= 64)
        client.receive()
    assert client.cc.bandwidth >= 0.5 * bulk
    start = wire.now
    _drain(wire, client, server, 1_000_000)
    assert wire.now - start < 4 * _PATH.delay_s + 2 * 1_000_000 / bulk


def test_a_sender_its_application_keeps_full_is_not_application_limited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transfer whose application keeps the send buffer full is limited by the path or
    by that buffer (1 MiB here, half the path's window: all of it is sent at times), and
    its rounds count as the path's; a lone small request is the application's."""
    small_buffer = replace(_CONFIG, send_buffer_bytes=1 << 20)
    wire = Wire(link=_PATH, config_a=small_buffer, config_b=_CONFIG)
    client, server = open_pair(wire)
    flagged: list[int] = []
    monkeypatch.setattr(
        client.cc, "on_app_limited", lambda: flagged.append(client.send_buffered_bytes)
    )
    data = payload(12_000_000, 7)
    sent = received = 0

    def app() -> None:
        nonlocal sent, received
        sent += client.send(memoryview(data)[sent : sent + 256 * 1024])
        received += len(server.receive())

    wire.run(lambda: received >= 6_000_000, app=app)
    assert flagged == []
    wire.run(lambda: received >= len(data), app=app)  # the tail is the application's
    wire.settle(1.0)
    flagged.clear()
    client.send(b"q" * 64)
    wire.step(until_s=wire.now)
    assert flagged == [64]
