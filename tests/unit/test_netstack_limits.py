"""The userspace stack's bounds: a listener's backlog, the node's caps (connections,
half-open handshakes), connections per remote address, the send buffer, the receive
buffer and the out-of-order queue of a connection. Each refusal is counted by its
reason and the peer's retry succeeds once there is room."""

import pytest
from netstack_wire import A_V4, B_V4, PORT, Link, Wire, next_numbers, open_pair, payload, transfer

from pilotif.netstack import Connection, LimitError, Listener, StackConfig, State, Writable
from pilotif.netstack.segment import TCP_RST, build_segment, parse_segment
from pilotif.packet.ip import TCP_ACK


def _connect_many(wire: Wire, count: int) -> list[Connection]:
    return [wire.a.connect(B_V4, PORT, wire.now) for _ in range(count)]


def test_a_full_backlog_drops_syns_until_the_application_accepts() -> None:
    wire = Wire()
    listener = wire.b.listen(PORT, backlog=2)
    clients = _connect_many(wire, 3)
    wire.settle(0.5)
    assert sorted(c.state.value for c in clients) == ["established", "established", "syn-sent"]
    assert wire.b.counters["backlog_full"] >= 1
    assert listener.pending == 2
    assert listener.accept() is not None
    wire.run(lambda: all(c.state is State.ESTABLISHED for c in clients), limit_s=10)


def test_connections_per_peer_are_capped() -> None:
    wire = Wire(config_b=StackConfig(max_connections_per_peer=2))
    listener = wire.b.listen(PORT)
    clients = _connect_many(wire, 3)
    wire.settle(0.5)
    assert sum(c.state is State.ESTABLISHED for c in clients) == 2
    assert wire.b.counters["peer_limit"] >= 1
    first = listener.accept()
    assert first is not None
    first.abort()
    wire.run(lambda: all(c.state is not State.SYN_SENT for c in clients), limit_s=10)


def test_half_open_handshakes_are_capped() -> None:
    wire = Wire(config_b=StackConfig(max_half_open=2))
    wire.b.listen(PORT)
    wire.tap = lambda direction, packet: (
        direction == "ab" or bool(parse_segment(packet).flags & TCP_RST)
    )  # SYN-ACKs never arrive: every handshake stays half open at B
    _connect_many(wire, 5)
    wire.settle(0.1)
    assert wire.b.connection_count == 2
    assert wire.b.counters["syn_queue_full"] == 3


def test_the_node_caps_its_connections_and_refuses_more_opens() -> None:
    wire = Wire(config_a=StackConfig(max_connections=2), config_b=StackConfig(max_connections=2))
    wire.b.listen(PORT)
    _connect_many(wire, 2)
    with pytest.raises(LimitError):
        wire.a.connect(B_V4, PORT, wire.now)
    wire.settle(0.5)
    other = Wire(config_b=StackConfig(max_connections=1))
    other.b.listen(PORT)
    late = _connect_many(other, 2)
    other.settle(0.5)
    assert [c.state for c in late].count(State.ESTABLISHED) == 1
    assert other.b.counters["connections_full"] >= 1


def test_per_peer_cap_applies_to_active_opens_too() -> None:
    wire = Wire(config_a=StackConfig(max_connections_per_peer=1))
    wire.a.connect(B_V4, PORT, wire.now)
    with pytest.raises(LimitError):
        wire.a.connect(B_V4, PORT + 1, wire.now)
    wire.a.connect(A_V4, PORT, wire.now)  # another address is another peer


def test_send_buffer_takes_no_more_than_its_cap_and_says_when_there_is_room() -> None:
    wire = Wire(config_a=StackConfig(send_buffer_bytes=100_000))
    client, server = open_pair(wire)
    assert client.send(payload(300_000, 1)) == 100_000
    assert client.send(b"more") == 0
    wire.run(
        lambda: any(isinstance(e, Writable) for e in wire.a.take_events()),
        app=lambda: server.receive() and None,
    )
    assert client.send(b"more") == 4


def test_receive_buffer_caps_what_waits_unread() -> None:
    wire = Wire(config_b=StackConfig(receive_buffer_bytes=50_000))
    client, server = open_pair(wire)
    client.send(payload(500_000, 2))
    wire.settle(3.0)
    assert server.readable_bytes <= 50_000
    assert client.send_buffered_bytes >= 450_000


def test_out_of_order_queue_is_capped_and_the_transfer_still_completes() -> None:
    config = StackConfig(max_out_of_order_segments=2)
    wire = Wire(link=Link(delay_s=0.01), config_b=config)
    client, server = open_pair(wire)
    count = [0]

    def drop_every_other_early(direction: str, packet: bytes) -> bool:
        if direction != "ab" or not parse_segment(packet).payload:
            return True
        count[0] += 1
        return not (count[0] < 20 and count[0] % 2 == 0)

    wire.tap = drop_every_other_early
    data = payload(200_000, 3)
    assert transfer(wire, client, server, data) == data
    assert wire.b.counters["out_of_order_full"] >= 1


def test_a_sender_that_ignores_the_window_cannot_overfill_the_receive_buffer() -> None:
    cap = 20_000
    wire = Wire(config_b=StackConfig(receive_buffer_bytes=cap))
    client, server = open_pair(wire)
    seq, ack = next_numbers(wire, "ab")
    ports = (client.local[1], client.remote[1])
    for _ in range(40):
        packet = build_segment(
            A_V4.packed, B_V4.packed, ports, seq, ack, TCP_ACK, 1000, payload=b"w" * 1000
        )
        wire.b.receive(packet, wire.now)
        seq = (seq + 1000) % 2**32
    assert server.readable_bytes <= cap
    assert wire.b.counters["beyond_window"] + wire.b.counters["out_of_window"] >= 20


def test_the_timer_heap_does_not_grow_with_re_armed_timers() -> None:
    # every segment moves a connection's far keepalive deadline; the old entry stays
    # buried under an earlier one that does not move
    config = StackConfig(keepalive_idle_s=1000.0)
    wire = Wire(config_a=config, config_b=config)
    listener = wire.b.listen(PORT)
    clients = [wire.a.connect(B_V4, PORT, wire.now) for _ in range(50)]
    servers: list[Connection] = []

    def accept_all() -> None:
        while (server := listener.accept()) is not None:
            servers.append(server)

    wire.run(lambda: len(servers) == len(clients), app=accept_all)
    servers[0].close()  # B closes first: its TIME-WAIT timer (60 s) heads the heap
    clients[0].close()
    wire.run(lambda: servers[0].state is State.TIME_WAIT)
    del clients[0], servers[0]
    for _ in range(20):
        for client in clients:
            client.send(b"ping")
        wire.run(lambda: all(server.readable_bytes == 4 for server in servers))
        for server in servers:
            server.receive()
    scheduled = len(wire.b._scheduled)
    assert len(wire.b._heap) <= 2 * scheduled + 64


def test_a_thousand_short_connections_leave_nothing_behind() -> None:
    wire = Wire(link=Link(delay_s=0.001))
    listener = wire.b.listen(PORT, backlog=1000)
    served = 0
    for index in range(1000):
        client = wire.a.connect(B_V4, PORT, wire.now)
        client.send(b"request %d" % index)
        client.close()
        wire.run(lambda: listener.pending > 0)
        server = listener.accept()
        assert server is not None
        wire.run(lambda: server.peer_closed)  # noqa: B023 - run here, in this iteration
        assert server.receive() == b"request %d" % index
        server.send(b"answer")
        server.close()
        wire.run(lambda: client.peer_closed and server.state is State.CLOSED)  # noqa: B023
        assert client.receive() == b"answer"
        served += 1
    assert served == 1000
    wire.settle(wire.a.config.time_wait_s + 5)
    assert wire.a.connection_count == 0 and wire.b.connection_count == 0


def _short_exchange(wire: Wire, listener: Listener) -> Connection:
    """One request and its answer; the client closes first (it ends in TIME-WAIT). The
    server side, which closes second, is returned CLOSED."""
    client = wire.a.connect(B_V4, PORT, wire.now)
    client.send(b"request")
    client.close()
    wire.run(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    wire.run(lambda: server.peer_closed)
    server.close()
    wire.run(lambda: server.state is State.CLOSED and client.state is State.TIME_WAIT)
    return client


def test_time_wait_is_capped_and_the_oldest_ends_early() -> None:
    wire = Wire(config_a=StackConfig(max_time_wait=5))
    listener = wire.b.listen(PORT)
    clients = [_short_exchange(wire, listener) for _ in range(10)]
    assert [c.state for c in clients].count(State.TIME_WAIT) == 5
    assert all(c.state is State.CLOSED for c in clients[:5])
    assert wire.a.counters["time_wait_recycled"] == 5


def test_time_wait_does_not_count_against_the_peer_cap() -> None:
    wire = Wire(config_a=StackConfig(max_connections_per_peer=3))
    listener = wire.b.listen(PORT)
    for _ in range(10):
        _short_exchange(wire, listener)
    assert wire.a.connection_count == 10  # all in TIME-WAIT, and more may still open


def test_a_new_syn_beyond_the_old_sequence_reuses_a_time_wait_4_tuple() -> None:
    wire = Wire()
    listener = wire.a.listen(PORT)  # B connects to A; A closes first and sits in TIME-WAIT
    client = wire.b.connect(A_V4, PORT, wire.now, local_port=40000)
    wire.run(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    server.close()
    wire.run(lambda: client.peer_closed)
    client.close()
    wire.run(lambda: client.state is State.CLOSED and server.state is State.TIME_WAIT)
    wire.settle(1.0)
    again = wire.b.connect(A_V4, PORT, wire.now, local_port=40000)
    # no SYN retry needed (that would take the initial timeout, 1 s)
    wire.run(lambda: again.state is State.ESTABLISHED and listener.pending > 0, limit_s=0.5)
    assert wire.a.counters["time_wait_reused"] == 1
    assert server.state is State.CLOSED


def test_close_before_the_handshake_sends_the_data_then_the_end() -> None:
    wire = Wire()
    listener = wire.b.listen(PORT)
    client = wire.a.connect(B_V4, PORT, wire.now)
    client.send(b"all of it")
    client.close()
    wire.run(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    wire.run(lambda: server.peer_closed and client.state is State.FIN_WAIT_2)
    assert server.receive() == b"all of it"


def test_one_peer_cannot_fill_the_syn_queue() -> None:
    wire = Wire(config_b=StackConfig(max_half_open=10, max_half_open_per_peer=3))
    wire.b.listen(PORT)
    wire.tap = lambda direction, packet: direction == "ab"  # handshakes stay half open at B
    _connect_many(wire, 5)
    wire.settle(0.1)
    assert wire.b.connection_count == 3
    assert wire.b.counters["peer_syn_limit"] == 2
    other = wire.b.connect(A_V4, PORT, wire.now)  # B's own opens are not half open
    assert other.state is State.SYN_SENT
