"""The node's memory budget (memory.py): hostile peers that never read, that fill every
window out of order, or whose data the application does not read cannot make the node
hold more than its budget, measured from the buffers themselves; a well-behaved
connection still completes its transfer meanwhile; advertised windows stop growing under
pressure and never move left; writes refused at the budget go on once memory is given
back; closing, aborting and resets give everything back."""

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netstack_wire import A_V4, B_V4, PORT, Link, Wire, open_pair, payload

from pilotif.netstack import Connection, Listener, StackConfig, State, Writable
from pilotif.netstack.memory import NodeMemory
from pilotif.netstack.segment import SEQ_SPACE, TCP_RST, build_segment, parse_segment
from pilotif.packet.ip import TCP_ACK, TCP_SYN

BUDGET_BYTES = 1024 * 1024
HOSTILE = StackConfig(
    memory_budget_bytes=BUDGET_BYTES,
    receive_buffer_bytes=256 * 1024,
    send_buffer_bytes=256 * 1024,
)
"""The node under attack: 24 connections of 256 KiB each way could hold 12 MiB."""
HOSTILE_CONNECTIONS = 24
BIG = StackConfig(
    memory_budget_bytes=64 * 1024 * 1024,
    receive_buffer_bytes=256 * 1024,
    send_buffer_bytes=256 * 1024,
)
"""The peer's own node (not the one under test): room for whatever it is sent."""


def held_by_buffers(connections: list[Connection]) -> int:
    """What the connections' buffers hold, counted from the buffers themselves (receive
    buffer, each out-of-order range, send buffer), not from the node's accounts."""
    total = 0
    for connection in connections:
        receiver, sender = connection._receiver, connection._sender  # no public view
        total += len(receiver.buffer) + len(sender.buffer)
        total += sum(len(chunk) for chunk in receiver.ooo._chunks)
    return total


class Watch:
    """B's side of the test: every connection it accepted, the budget checked at every
    step, and the right edge of every window B advertised (which must never move left)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.listener: Listener = wire.b.listen(PORT, backlog=HOSTILE_CONNECTIONS + 8)
        self.accepted: list[Connection] = []
        self.edges: dict[int, int] = {}
        self.at_share_under_pressure = 0
        """ACKs B sent under pressure for a connection holding its share or more."""
        self.grown_under_pressure = 0
        """ACKs B sent under pressure that moved a window's edge right."""
        self.most_held = 0
        self.most_charged = 0
        """The most the node's accounts were charged (held, or promised by windows)."""
        wire.tap = self._tap

    def _tap(self, direction: str, packet: bytes) -> bool:
        if direction == "ba":
            segment = parse_segment(packet)
            if segment.flags & TCP_ACK and not segment.flags & (TCP_RST | TCP_SYN):
                shift = self.wire.b.config.receive_window_shift()
                edge = segment.ack + (segment.window << shift)
                port = segment.destination_port
                if port in self.edges:
                    moved = (edge - self.edges[port] + SEQ_SPACE // 2) % SEQ_SPACE
                    moved -= SEQ_SPACE // 2
                    # (by less than a unit of the scale only when the whole budget
                    # was spoken for: window_rounded_down)
                    rounded = self.wire.b.counters["window_rounded_down"] > 0
                    assert moved >= 0 or (rounded and moved > -(1 << shift)), (
                        f"B moved a window's edge left by {-moved}"
                    )
                    memory = self.wire.b.memory
                    # under pressure before this ACK's window was charged
                    pressed = memory.charged_bytes - max(moved, 0) >= memory.pressure_bytes
                    if pressed and self._at_share(port):
                        self.at_share_under_pressure += 1
                        assert moved < 1 << shift, "a window grew under pressure past its share"
                    elif moved >= 1 << shift and pressed:
                        # (a move of less than a unit is the kept edge rounded up)
                        self.grown_under_pressure += 1
                        offered = (edge - segment.ack) % SEQ_SPACE
                        assert offered <= memory.share_bytes + 2 * memory.reserve_bytes
                    if moved < 0:
                        return True  # the edge advertised before is still where it was
                self.edges[port] = edge
        return True

    def _at_share(self, port: int) -> bool:
        memory = self.wire.b.memory
        servers = [s for s in self.accepted if s.remote[1] == port]
        return held_by_buffers(servers) >= memory.share_bytes > 0 and len(servers) == 1

    def app(self) -> None:
        while (server := self.listener.accept()) is not None:
            self.accepted.append(server)
        self.check()

    def check(self) -> None:
        """The budget holds, and the node's accounts agree with the buffers."""
        held = held_by_buffers(self.accepted)
        memory = self.wire.b.memory
        assert held <= BUDGET_BYTES
        assert memory.held_bytes == held == self.wire.b.buffered_bytes
        assert memory.charged_bytes <= memory.budget_bytes
        self.most_held = max(self.most_held, held)
        self.most_charged = max(self.most_charged, memory.charged_bytes)

    def run(self, until: Callable[[], bool], limit_s: float = 120.0) -> None:
        self.wire.run(until, limit_s=limit_s, app=self.app)


@dataclass
class Attack:
    """B under watch: a well-behaved pair opened first, then HOSTILE_CONNECTIONS more from
    A (`clients` at A, `hostile` at B)."""

    wire: Wire
    watch: Watch
    good_client: Connection
    good_server: Connection
    clients: list[Connection]
    hostile: list[Connection]


def _under_attack() -> Attack:
    wire = Wire(link=Link(delay_s=0.005), config_a=BIG, config_b=HOSTILE)
    watch = Watch(wire)
    good_client = wire.a.connect(B_V4, PORT, wire.now)
    watch.run(lambda: len(watch.accepted) == 1 and good_client.state is State.ESTABLISHED)
    clients = [wire.a.connect(B_V4, PORT, wire.now) for _ in range(HOSTILE_CONNECTIONS)]
    watch.run(lambda: len(watch.accepted) == HOSTILE_CONNECTIONS + 1)
    good_server, *hostile = watch.accepted
    return Attack(wire, watch, good_client, good_server, clients, hostile)


def _transfer_checked(
    watch: Watch,
    sender: Connection,
    receiver: Connection,
    data: bytes,
    feed: Callable[[], None] | None = None,
) -> bytes:
    """`transfer`, with the budget checked (and `feed` called) at every step."""
    offset = 0
    got = bytearray()

    def app() -> None:
        nonlocal offset
        watch.app()
        if feed is not None:
            feed()
        if offset < len(data):
            offset += sender.send(data[offset : offset + 64 * 1024])
            if offset == len(data):
                sender.close()
        got.extend(receiver.receive())

    watch.wire.run(lambda: receiver.peer_closed and not receiver.readable_bytes, app=app)
    return bytes(got)


def test_peers_whose_data_is_never_read_fill_the_budget_and_no_more() -> None:
    attack = _under_attack()
    wire, watch, clients = attack.wire, attack.watch, attack.clients
    for client in clients:  # B's application never reads these
        client.send(payload(256 * 1024, 1))
    data = payload(300_000, 2)
    assert _transfer_checked(watch, attack.good_client, attack.good_server, data) == data
    wire.settle(2.0)
    watch.check()
    assert watch.most_held > BUDGET_BYTES // 2  # the budget, not the caps, held them
    assert not wire.b.counters["memory_full_drop"]  # the windows' data always had room
    assert watch.at_share_under_pressure > 0  # and windows at their share stopped growing
    assert watch.grown_under_pressure > 0  # while the reader's grew, within its share


def test_out_of_order_data_in_every_window_is_held_within_the_budget() -> None:
    attack = _under_attack()
    wire, watch, hostile = attack.wire, attack.watch, attack.hostile
    flooded_to = {server: server._receiver.rcv_nxt + 1 for server in hostile}

    def flood() -> None:
        """Into every hostile window as it opens: all but its first byte, so nothing is
        in order."""
        for server in hostile:
            receiver, sender = server._receiver, server._sender
            ack = (sender.iss + sender.snd_nxt) % SEQ_SPACE
            start = flooded_to[server]
            while start + 1000 <= receiver.rcv_adv:
                seq = (receiver.irs + start) % SEQ_SPACE
                ports = (server.remote[1], server.local[1])
                wire.inject(
                    "ab",
                    build_segment(
                        A_V4.packed, B_V4.packed, ports, seq, ack, TCP_ACK, 65535, b"", b"o" * 1000
                    ),
                )
                start += 1000
            flooded_to[server] = start

    data = payload(300_000, 3)
    assert (
        _transfer_checked(watch, attack.good_client, attack.good_server, data, feed=flood) == data
    )
    memory = wire.b.memory
    out_of_order = sum(server._receiver.ooo.bytes for server in hostile)
    assert memory.pressure_bytes // 2 < out_of_order <= memory.budget_bytes
    assert not wire.b.counters["memory_pressure_drop"]  # what the windows offered was kept
    watch.check()


def test_writes_to_peers_that_never_read_are_refused_at_the_budget() -> None:
    attack = _under_attack()
    wire, watch, hostile = attack.wire, attack.watch, attack.hostile
    clients = attack.clients
    chunk = payload(64 * 1024, 4)

    def write_all() -> None:
        """B's application writes to every hostile peer whatever it takes; A's never
        reads what these send."""
        for server in hostile:
            while server.state is State.ESTABLISHED and server.send(chunk):
                pass

    data = payload(200_000, 5)
    assert (
        _transfer_checked(watch, attack.good_server, attack.good_client, data, feed=write_all)
        == data
    )
    assert watch.most_charged > BUDGET_BYTES // 2  # writes and windows: the budget
    assert wire.b.counters["memory_write_refused"] > 0
    for client in clients:
        client.abort()  # the peers reset: their send buffers are given back
    watch.run(lambda: all(s.state is State.CLOSED for s in hostile))
    assert wire.b.buffered_bytes == held_by_buffers(watch.accepted) == 0


def test_a_writer_refused_at_the_budget_is_told_when_memory_returns() -> None:
    attack = _under_attack()
    wire = attack.wire
    first, *others = attack.hostile
    for server in others:
        while server.send(payload(64 * 1024, 6)):
            pass
    while first.send(payload(64 * 1024, 6)):
        pass
    assert first.send(b"x") == 0
    wire.b.take_events()
    for server in others:
        server.abort()
    assert Writable(first) in wire.b.take_events()
    assert first.send(payload(64 * 1024, 6)) > 0


def test_a_writer_held_to_its_reserve_is_told_when_its_own_data_is_acknowledged() -> None:
    memory = NodeMemory(StackConfig(memory_budget_bytes=100_000))
    woken: list[str] = []
    small = memory.open(lambda: woken.append("small"))
    big = memory.open(lambda: woken.append("big"))
    big.hold(memory.budget_bytes - 3 * memory.reserve_bytes, 0)  # the node is full
    assert memory.charged_bytes == memory.budget_bytes
    assert small.send_room() == memory.reserve_bytes  # the reserve, and no more
    small.hold(0, memory.reserve_bytes)
    assert small.send_room() == 0
    small.wait()
    small.hold(0, 0)  # acknowledged: its charge (the reserve) did not change
    assert woken == ["small"]
    assert small.send_room() == memory.reserve_bytes


def test_a_new_connection_is_refused_when_its_reserve_does_not_fit() -> None:
    reserve = NodeMemory(StackConfig()).reserve_bytes
    config = StackConfig(memory_budget_bytes=64 * 1024, initial_receive_window_bytes=reserve)
    wire = Wire(config_a=config, config_b=config)
    wire.b.listen(PORT)
    reserve = 2 * wire.a.memory.reserve_bytes
    opened = [wire.a.connect(B_V4, PORT, wire.now) for _ in range(64 * 1024 // reserve)]
    try:
        wire.a.connect(B_V4, PORT, wire.now)
    except Exception as error:
        assert "memory" in str(error)
    else:
        raise AssertionError("a connection beyond the budget was opened")
    opened[0].abort()
    wire.a.connect(B_V4, PORT, wire.now)  # its reserve came back
    wire.settle(1.0)
    assert wire.b.counters["memory_full"] > 0  # B had no room for A's last SYN either


def test_memory_returns_after_close_abort_and_reset() -> None:
    attack = _under_attack()
    wire, watch, clients, hostile = attack.wire, attack.watch, attack.clients, attack.hostile
    for client, server in zip(clients, hostile, strict=True):
        client.send(payload(100_000, 7))
        server.send(payload(100_000, 8))
    wire.settle(1.0)
    watch.check()
    assert wire.b.buffered_bytes > 0
    third = len(clients) // 3
    for client in clients[:third]:
        client.abort()  # a reset from the peer
    for server in hostile[third : 2 * third]:
        server.abort()  # aborted by the application
    for client, server in zip(clients[2 * third :], hostile[2 * third :], strict=True):
        client.close()  # closed both ways, nothing read
        server.close()
    attack.good_client.close()
    attack.good_server.close()
    watch.run(lambda: all(s.state in (State.CLOSED, State.TIME_WAIT) for s in watch.accepted))
    wire.settle(wire.b.config.time_wait_s + 5)
    assert wire.b.connection_count == 0
    assert held_by_buffers(watch.accepted) == 0
    memory = wire.b.memory
    assert memory.held_bytes == memory.charged_bytes == memory.open_accounts == 0


_KINDS = ("segment",) * 4 + ("data", "data", "read", "read", "write", "poll", "abort", "close")
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(_KINDS),
        st.integers(0, 2),  # which connection
        st.one_of(st.just(0), st.integers(-3000, 3000), st.integers(-70_000, 70_000)),
        st.one_of(st.just(0), st.integers(-3000, 3000)),
        st.sampled_from([TCP_ACK, TCP_ACK | 0x08, TCP_ACK | 0x01, 0x04, 0x14, 0x02, 0x3F]),
        st.one_of(st.sampled_from([1380, 4000]), st.integers(0, 4000)),
    ),
    min_size=5,
    max_size=60,
)
"""(what, connection, sequence offset from RCV.NXT, acknowledgement offset from SND.NXT,
flags, payload bytes): a hostile segment, in-order data of that length, or the
application's call."""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ACTIONS)
def test_hostile_segments_keep_the_accounts_true_and_within_the_budget(
    actions: list[tuple[str, int, int, int, int, int]],
) -> None:
    config = StackConfig(
        memory_budget_bytes=24 * 1024,
        receive_buffer_bytes=20_000,
        send_buffer_bytes=20_000,
        max_out_of_order_segments=8,
        initial_receive_window_bytes=2000,
    )
    wire = Wire(config_b=config)
    servers = []
    for _ in range(3):
        servers.append(open_pair(wire)[1])
        wire.b.unlisten(wire.b._listeners[PORT])
    memory = wire.b.memory
    for kind, index, seq_delta, ack_delta, flags, length in actions:
        server = servers[index]
        if kind in ("segment", "data"):
            in_order = kind == "data"  # three segments in order with a right ACK
            for _ in range(3 if in_order else 1):
                receiver, sender = server._receiver, server._sender
                seq = receiver.irs + receiver.rcv_nxt + (0 if in_order else seq_delta)
                ack = sender.iss + sender.snd_nxt + (0 if in_order else ack_delta)
                packet = build_segment(
                    A_V4.packed,
                    B_V4.packed,
                    (server.remote[1], server.local[1]),
                    seq % SEQ_SPACE,
                    ack % SEQ_SPACE,
                    TCP_ACK if in_order else flags,
                    0xFFFF,
                    b"",
                    b"h" * length,
                )
                wire.inject("ab", packet)
        elif kind == "read":
            server.receive(5000)
        elif kind == "write" and server.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            if server._sender.fin_at is None:
                server.send(b"w" * 9000)
        elif kind == "abort":
            server.abort()
        elif kind == "close":
            server.close()
        elif kind == "poll":
            wire.now += 0.05
            wire.b.poll(wire.now)
        held = held_by_buffers(servers)
        assert memory.held_bytes == held == wire.b.buffered_bytes
        assert held <= memory.charged_bytes <= memory.budget_bytes
        open_count = sum(s.state not in (State.CLOSED, State.TIME_WAIT) for s in servers)
        assert memory.open_accounts == open_count
