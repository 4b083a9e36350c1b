"""The window a receiver advertises: with window scaling, the right edge the peer sees
(the ACK plus the window field shifted by our scale) never moves left, however the
segments it is sent cut the scale's granularity (RFC 7323 2.4, RFC 9293 3.8.6); and
across many connections the windows never promise more than the node's memory budget
has, so data sent inside them is never dropped for lack of it."""

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netstack_wire import A_V4, B_V4, PORT, Wire, open_pair, payload

from pilotif.netstack import Connection, StackConfig
from pilotif.netstack.segment import SEQ_SPACE, build_segment, parse_segment
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


NARROW_BUDGETS = [
    StackConfig(
        memory_budget_bytes=192 * 1024,
        receive_buffer_bytes=32 * 1024,
        send_buffer_bytes=32 * 1024,
        max_out_of_order_segments=256,
        initial_receive_window_bytes=256 * 1024,
    ),
    StackConfig(  # a scaled window (shift 3)
        memory_budget_bytes=1024 * 1024,
        receive_buffer_bytes=256 * 1024,
        send_buffer_bytes=256 * 1024,
        max_out_of_order_segments=256,
        initial_receive_window_bytes=256 * 1024,
    ),
]
"""Nodes whose budget holds the buffers of four connections or so, not six."""
CONNECTIONS = 6
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(("data", "data", "fill", "read", "poll", "poll", "write")),
        st.integers(0, CONNECTIONS - 1),
        st.floats(0, 1),  # where in the window the data starts (0: in order)
        st.integers(1, 40_000),
    ),
    min_size=5,
    max_size=50,
)
"""(what, connection, offset into its window, bytes): data inside the window B advertised
(`fill`: all of it, from the offset on), the application reading, time passing (B's ACKs
and window updates go out), or B's application writing."""


MSS = 1380


def _send_inside(wire: Wire, server: Connection, start: int, end: int) -> None:
    """Data from `start` to `end` (inside the window B advertised) to B's `server`, which
    must keep all of it."""
    receiver = server._receiver  # no public view
    seq = (receiver.irs + start) % SEQ_SPACE
    ack = (server._sender.iss + server._sender.snd_nxt) % SEQ_SPACE
    ports = (server.remote[1], server.local[1])
    data = b"d" * (end - start)
    wire.inject(
        "ab", build_segment(A_V4.packed, B_V4.packed, ports, seq, ack, TCP_ACK, 0xFFFF, b"", data)
    )
    held = receiver.ooo.sack_blocks(len(receiver.ooo))
    kept = receiver.rcv_nxt >= end or any(s <= start and end <= e for s, e in held)
    assert kept, "data inside the window was dropped"


def _promised(connection: Connection) -> int:
    """What a connection may come to hold without advertising more: what it received and
    the application did not read, its window, and its send buffer."""
    receiver = connection._receiver  # no public view
    window = max(receiver.rcv_adv - receiver.rcv_nxt, 0)
    return len(receiver.buffer) + window + len(connection._sender.buffer)


def _six_connections(wire: Wire) -> list[Connection]:
    """B's side of six connections from A (B's listener gone again)."""
    servers = []
    for _ in range(CONNECTIONS):
        servers.append(open_pair(wire)[1])
        wire.b.unlisten(wire.b._listeners[PORT])
    wire.b.poll(wire.now)
    return servers


def test_every_window_filled_at_once_is_kept_whole() -> None:
    config = NARROW_BUDGETS[0]
    wire = Wire(config_b=config)
    servers = _six_connections(wire)
    for server in servers:  # B's application reads none of it
        receiver = server._receiver
        for at in range(receiver.rcv_nxt, receiver.rcv_adv, MSS):
            _send_inside(wire, server, at, min(at + MSS, receiver.rcv_adv))
    assert sum(_promised(s) for s in servers) <= config.memory_budget_bytes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NARROW_BUDGETS), _ACTIONS)
def test_windows_never_promise_more_than_the_budget_and_data_in_them_is_kept(
    config: StackConfig, actions: list[tuple[str, int, float, int]]
) -> None:
    wire = Wire(config_b=config)
    servers = _six_connections(wire)
    budget = config.memory_budget_bytes
    for kind, index, where, length in actions:
        server = servers[index]
        receiver = server._receiver
        if kind in ("data", "fill"):
            window = receiver.rcv_adv - receiver.rcv_nxt
            start = receiver.rcv_nxt + int(where * window)
            end = receiver.rcv_adv if kind == "fill" else min(start + length, receiver.rcv_adv)
            for at in range(start, end, MSS):
                _send_inside(wire, server, at, min(at + MSS, end))
        elif kind == "read":
            server.receive(length)
        elif kind == "write":
            server.send(b"w" * length)
        else:
            wire.now += 0.05
            wire.b.poll(wire.now)
        promised = sum(_promised(s) for s in servers)
        assert promised <= budget, f"windows and buffers promise {promised} of {budget}"
    assert not wire.b.counters["memory_full_drop"] + wire.b.counters["memory_pressure_drop"]


def test_with_no_byte_of_the_budget_left_the_edge_is_rounded_down_and_data_still_taken() -> None:
    """The kept edge's round-up needs a few bytes of the budget; with none left the field
    is rounded down (counted), by less than a unit, and what the peer sends up to the
    edge advertised before is still taken."""
    wire = Wire(config_b=SCALED)
    client, server = open_pair(wire)
    unit = 1 << SCALED.receive_window_shift()
    client.send(payload(100_000, 4))  # B's application reads none of it
    wire.settle(1.0)
    memory = wire.b.memory
    before = memory.charged_bytes
    rest = memory.open(lambda: None)  # something else takes every byte left
    rest.hold(memory.budget_bytes - before - memory.reserve_bytes, 0)
    assert memory.charged_bytes == memory.budget_bytes
    receiver = server._receiver
    edge = receiver.rcv_adv
    client.send(payload(unit * 40 + 3, 5))
    wire.settle(1.0)
    assert wire.b.counters["window_rounded_down"] > 0
    assert receiver.rcv_adv == edge  # where data is taken did not move
    assert memory.charged_bytes <= memory.budget_bytes
    assert server.readable_bytes == 100_000 + unit * 40 + 3
