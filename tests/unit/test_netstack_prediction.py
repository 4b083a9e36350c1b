"""Header prediction (Connection._predicted, RFC 9293 3.10.7.4): the same conversation over
the same simulated wire (small requests and answers, then a bulk transfer each way with
loss, duplication and reordering, then the close), once with the fast path and once with
every segment taken by the general path, leaves both connections in the same state after
each packet received (their halves' numbers, timers and memory charges; the events told),
puts the same packets on the wire, delivers the same data and ends with the same
counters; and the fast path took most of the segments of the established connection,
the general path the rest."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from netstack_wire import Link, Wire, open_pair, payload, transfer

from pilotif.netstack import Connection, Stack, StackConfig, State
from pilotif.netstack.segment import Segment

ROUND_TRIPS = 40
MESSAGE_BYTES = 64
BULK_BYTES = 600_000
LINK = Link(delay_s=0.005, loss=0.01, duplicate=0.01, reorder=0.02, rate_bytes_per_s=20e6)
CONFIG = StackConfig(keepalive_idle_s=60.0, send_buffer_bytes=128 * 1024)
"""Keepalives on: a segment taken moves the connection's keepalive timer; a send buffer
smaller than the bulk's writes: ACKs tell the writer when it may write again."""
Snapshot = tuple[tuple[str, object], ...]


def snapshot(connection: Connection) -> Snapshot:
    """The plain values (numbers, flags, times, the state) of a connection and of its
    sending half, receiving half and memory account."""
    parts = (connection, connection._sender, connection._receiver, connection._account)
    return tuple(
        (f"{type(part).__name__}.{name}", value)
        for part in parts
        for name, value in vars(part).items()
        if value is None or isinstance(value, int | float | str | State)
    )


@dataclass
class Outcome:
    packets: list[tuple[str, bytes]]
    """Every packet either side sent, in order (before the link lost any)."""
    after_each: list[tuple[Snapshot, Snapshot, list[str]]]
    """After each packet a stack received (once both connections were open): both
    connections' snapshots and the events that stack told."""
    received: list[bytes]
    states: tuple[State, State]
    counters: tuple[Counter[str], Counter[str]]
    retransmissions: tuple[int, int]


def converse() -> Outcome:
    packets: list[tuple[str, bytes]] = []
    after_each: list[tuple[Snapshot, Snapshot, list[str]]] = []

    def tap(direction: str, packet: bytes) -> bool:
        packets.append((direction, packet))
        return True

    wire = Wire(link=LINK, config_a=CONFIG, config_b=CONFIG, seed=5, tap=tap)
    client, server = open_pair(wire)
    for stack in (wire.a, wire.b):

        def receive(packet: bytes, now: float, stack: Stack = stack) -> None:
            Stack.receive(stack, packet, now)
            events = [type(event).__name__ for event in stack.take_events()]
            after_each.append((snapshot(client), snapshot(server), events))

        stack.receive = receive  # type: ignore[method-assign]
    received = []
    for number in range(ROUND_TRIPS):
        request = payload(MESSAGE_BYTES, number)
        client.send(request)
        wire.run(lambda: server.readable_bytes >= MESSAGE_BYTES)
        server.send(server.receive()[::-1])
        wire.run(lambda: client.readable_bytes >= MESSAGE_BYTES)
        received.append(client.receive())
    received.append(transfer(wire, client, server, payload(BULK_BYTES, 100)))
    received.append(transfer(wire, server, client, payload(BULK_BYTES, 101)))
    wire.settle(5.0)
    return Outcome(
        packets,
        after_each,
        received,
        (client.state, server.state),
        (wire.a.counters.copy(), wire.b.counters.copy()),
        (client.retransmissions, server.retransmissions),
    )


def test_the_fast_path_gives_what_the_general_path_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken: Counter[bool] = Counter()
    predicted: Callable[[Connection, Segment, float], bool] = Connection._predicted

    def counted(connection: Connection, segment: Segment, now: float) -> bool:
        result = predicted(connection, segment, now)
        taken[result] += 1
        return result

    monkeypatch.setattr(Connection, "_predicted", counted)
    fast = converse()
    monkeypatch.setattr(Connection, "_predicted", lambda connection, segment, now: False)
    general = converse()

    assert fast.received == general.received
    assert fast.received[-2:] == [payload(BULK_BYTES, 100), payload(BULK_BYTES, 101)]
    assert fast.after_each == general.after_each
    assert fast.packets == general.packets
    assert fast.states == general.states
    assert fast.counters == general.counters
    assert fast.retransmissions == general.retransmissions
    assert min(fast.retransmissions) > 0, "the loss did not reach the general path"
    assert taken[True] > 3 * taken[False] > 0
