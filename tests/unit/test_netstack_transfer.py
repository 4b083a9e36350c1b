"""Two userspace stacks move data through the simulated wire: intact both ways over a
clean link and over one that loses, duplicates, reorders and is rate-limited; IPv4 and
IPv6; what a user of the stack checks (every byte arrives, in order, and both ends see
the close)."""

import hashlib
import itertools

import pytest
from netstack_wire import A_V4, A_V6, B_V6, Link, Wire, open_pair, payload, transfer

from pilotif.netstack import Closed, StackConfig, State


def test_handshake_opens_both_ends() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    assert client.state is State.ESTABLISHED
    assert server.state is State.ESTABLISHED
    assert server.remote == (A_V4.packed, client.local[1])


def test_five_megabytes_both_ways_over_a_clean_link() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    up, down = payload(5_000_000, 1), payload(5_000_000, 2)
    assert transfer(wire, client, server, up) == up
    assert transfer(wire, server, client, down) == down


@pytest.mark.parametrize("ipv6", [False, True])
def test_transfer_survives_loss_duplication_reordering_and_a_rate(ipv6: bool) -> None:
    link = Link(delay_s=0.01, loss=0.02, duplicate=0.02, reorder=0.05, rate_bytes_per_s=20e6)
    wire = Wire(link=link, seed=7)
    client, server = open_pair(wire, ipv6=ipv6)
    up, down = payload(2_000_000, 3), payload(2_000_000, 4)
    got_up = transfer(wire, client, server, up)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert transfer(wire, server, client, down) == down
    assert client.retransmissions > 0 and server.retransmissions > 0


def test_both_ends_close_and_forget_the_connection() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    client.close()
    wire.run(lambda: server.peer_closed)
    server.close()
    wire.run(lambda: server.state is State.CLOSED)
    assert client.state is State.TIME_WAIT
    events = [e for e in wire.b.take_events() if isinstance(e, Closed)]
    assert [e.reason for e in events] == ["closed"]
    wire.settle(wire.a.config.time_wait_s + 1)
    assert client.state is State.CLOSED
    assert wire.a.connection_count == 0 and wire.b.connection_count == 0


def test_ipv6_addresses_are_kept() -> None:
    wire = Wire()
    client, server = open_pair(wire, ipv6=True)
    assert client.local[0] == A_V6.packed and server.local[0] == B_V6.packed


def test_both_directions_at_once_over_a_lossy_link_keep_within_the_mtu() -> None:
    # each side's data segments carry SACK blocks for what it holds out of order: the
    # payload shrinks by the options (the wire refuses a packet over the MTU)
    wire = Wire(link=Link(delay_s=0.01, loss=0.03), seed=11)
    client, server = open_pair(wire)
    up, down = payload(1_000_000, 5), payload(1_000_000, 6)
    sent = {"up": 0, "down": 0}
    got = {"up": bytearray(), "down": bytearray()}

    def app() -> None:
        if sent["up"] < len(up):
            sent["up"] += client.send(up[sent["up"] : sent["up"] + 65536])
        if sent["down"] < len(down):
            sent["down"] += server.send(down[sent["down"] : sent["down"] + 65536])
        got["up"] += server.receive()
        got["down"] += client.receive()

    wire.run(lambda: len(got["up"]) == len(up) and len(got["down"]) == len(down), app=app)
    assert bytes(got["up"]) == up and bytes(got["down"]) == down


@pytest.mark.parametrize("ipv6", [False, True])
def test_one_percent_loss_over_100_ms_carries_over_10_mb_s_without_a_stall(ipv6: bool) -> None:
    """The issue's impaired path, simulated: 100 ms round trip, 1% loss each way. The
    delivery-rate model (the userspace node's) keeps its window through random loss."""
    link = Link(delay_s=0.05, loss=0.01, rate_bytes_per_s=100e6)
    config = StackConfig(
        congestion="delivery_rate", send_buffer_bytes=4 << 20, receive_buffer_bytes=4 << 20
    )
    wire = Wire(link=link, config_a=config, config_b=config, seed=5)
    client, server = open_pair(wire, ipv6=ipv6)
    data = payload(20_000_000, 10)
    sent = 0
    got = bytearray()
    arrivals: list[tuple[float, int]] = []

    def app() -> None:
        nonlocal sent
        if sent < len(data):
            sent += client.send(memoryview(data)[sent : sent + 256 * 1024])
        if chunk := server.receive():
            got.extend(chunk)
            arrivals.append((wire.now, len(got)))

    wire.run(lambda: len(got) == len(data), app=app)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert client.retransmissions > 0
    steady = next((t, n) for t, n in arrivals if n >= len(data) // 4)
    rate = (len(data) - steady[1]) / (wire.now - steady[0])
    assert rate >= 10e6, f"{rate / 1e6:.1f} MB/s once started"
    stall = max(later[0] - earlier[0] for earlier, later in itertools.pairwise(arrivals))
    assert stall < 1.0, f"{stall:.2f} s without new data"
