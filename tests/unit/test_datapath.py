"""The packet pump (daemon.datapath.DataPath) on a real event loop with no root: a fake
local stack (fake_stack.MemoryStack) and a fake Bind whose socket is one end of a socket
pair. Node A's data path moves packets between its stack, its device and the Bind; B is
a bare device the test drives, on the same monotonic clock the data path reads.
"""

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import exchange, make_pair, peer_of, take
from fake_bind import FakeBind
from fake_stack import MemoryStack
from test_device_batch import MSS, tcp_segment
from test_offload import split, tcp_super_packet

from pilotif.daemon.datapath import DataPath
from pilotif.packet.segments import SuperPacket
from pilotif.wg.events import Endpoint, Event, HandshakeCompleted
from pilotif.wg.fastpath import batch_loops

SETTLE_S = 0.05
"""How long the loop runs for what is already readable to be handled."""
KEEPALIVE_S = 1
"""A's persistent keepalive to B in the timer test."""


class SocketBind(FakeBind):
    """A FakeBind that the loop watches: `arrive` queues a receive (its buffer, segment
    size and source) and makes its socket readable."""

    def __init__(self) -> None:
        super().__init__()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._arrivals: list[tuple[memoryview, int, Endpoint]] = []

    def sockets(self) -> list[socket.socket]:
        return [self._reader]

    def arrive(self, datagrams: list[bytes], source: Endpoint) -> None:
        """One receive of `datagrams` glued as GRO glues them (all but the last one size)."""
        size = len(datagrams[0]) if len(datagrams) > 1 else 0
        self._arrivals.append((memoryview(b"".join(datagrams)), size, source))
        self._writer.send(b"\x01")

    def receive(self, sock: socket.socket) -> tuple[memoryview, int, Endpoint] | None:
        if not self._arrivals:
            with contextlib.suppress(BlockingIOError):
                sock.recv(4096)
            return None
        return self._arrivals.pop(0)

    def close(self) -> None:
        super().close()
        self._reader.close()
        self._writer.close()


class World:
    """A with its data path, stack and Bind; B as a bare device; a session between them
    established at the monotonic clock's now."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, merges: bool = False) -> None:
        self.loop = loop
        self.a, self.b = make_pair()
        now = time.monotonic()
        self.a.device.send((self.a.packet_to(self.b, b"hello"),), now)
        exchange(self.a, self.b, now)
        self.a.to_tun.clear()
        self.b.to_tun.clear()
        self.a.events.clear()
        self.bind = SocketBind()
        self.stack = MemoryStack(merges_writes=merges)
        self.events: list[Event] = []
        self.datapath = DataPath(self.a.device, self.bind, loop, self.events.append)
        self.datapath.start_stack(self.stack)

    def run(self, seconds: float = SETTLE_S) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def sent_to_b(self) -> list[bytes]:
        """What A's Bind sent to B's endpoint; forgets it."""
        sent = [data for data, to, _ in self.bind.sent if to == self.b.endpoint]
        self.bind.sent.clear()
        return sent

    def into_b(self, datagrams: list[bytes]) -> list[bytes]:
        """B receives `datagrams` from A; the packets B delivers."""
        self.b.device.receive(datagrams, self.a.endpoint, time.monotonic())
        delivered = [bytes(packet) for packet in self.b.to_tun]
        self.b.to_tun.clear()
        return delivered

    def from_b(self, packets: list[bytes]) -> list[bytes]:
        """The datagrams B seals for `packets` to A."""
        self.b.device.send(packets, time.monotonic())
        return [datagram for datagram, _ in take(self.b)]

    def close(self) -> None:
        self.datapath.close()
        self.bind.close()
        self.stack.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture
def world(loop: asyncio.AbstractEventLoop) -> Iterator[World]:
    built = World(loop)
    yield built
    built.close()


def test_a_packet_from_the_stack_is_sealed_and_handed_to_the_bind(world: World) -> None:
    packets = [world.a.packet_to(world.b, b"to b %d" % i) for i in range(3)]
    world.stack.inject(*packets)
    world.run()
    assert world.into_b(world.sent_to_b()) == packets


def test_a_datagram_from_the_bind_is_opened_and_written_to_the_stack(world: World) -> None:
    packets = [world.b.packet_to(world.a, b"to a %d" % i) for i in range(5)]
    world.bind.arrive(world.from_b(packets), world.b.endpoint)
    world.run()
    assert world.stack.written == packets


def test_a_super_packet_from_the_stack_reaches_the_peer_as_its_segments(world: World) -> None:
    raw, header = tcp_super_packet(bytes(range(256)) * 80)
    world.stack.inject(SuperPacket(memoryview(raw), header.csum_start, header.gso_size))
    world.run()
    assert world.into_b(world.sent_to_b()) == split(raw, header)


def test_a_batch_of_one_flow_is_one_merged_write_when_the_stack_merges(
    loop: asyncio.AbstractEventLoop,
) -> None:
    world = World(loop, merges=True)
    try:
        # A first message of B's: a batch is taken at once only after the session's first.
        world.bind.arrive(world.from_b([world.b.packet_to(world.a)]), world.b.endpoint)
        world.run()
        world.stack.written.clear()
        segments = [tcp_segment(world.b, world.a, i * MSS) for i in range(8)]
        world.bind.arrive(world.from_b(segments), world.b.endpoint)
        world.run()
        if batch_loops.NATIVE:
            assert batch_loops.coalesce is not None
            assert world.stack.merged == batch_loops.coalesce(segments)
        else:
            assert world.stack.written == segments
    finally:
        world.close()


def test_handshakes_and_keepalives_go_out_on_the_timer(world: World) -> None:
    now = time.monotonic()
    world.a.device.set_persistent_keepalive(world.b.device.public_key, KEEPALIVE_S, now)
    world.datapath.flush(now)
    world.run(KEEPALIVE_S + 0.5)
    sent = world.sent_to_b()
    assert sent, "no keepalive went out"
    assert world.into_b(sent) == []
    assert peer_of(world.b, world.a).rx_bytes > 0


def test_the_device_events_reach_the_daemon(world: World) -> None:
    now = time.monotonic()
    world.b.device.rehandshake(world.a.device.public_key, now)
    world.bind.arrive(world.from_b([]), world.b.endpoint)
    world.run()
    (response,) = world.sent_to_b()
    world.b.device.receive((response,), world.a.endpoint, now)
    world.bind.arrive([datagram for datagram, _ in take(world.b)], world.b.endpoint)
    world.run()
    assert HandshakeCompleted(world.b.device.public_key, False) in world.events
