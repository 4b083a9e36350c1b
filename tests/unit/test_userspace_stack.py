"""Two userspace nodes (pilotif.userspace.UserspaceStack) on a real event loop, each with
its data path and WireGuard device, their Binds linked in memory: TCP through both
devices as asyncio streams (the bulk as large segments, sealed as GSO trains), ICMP echo,
refusals, resets, a paused reader, and an exposed port spliced to a local server."""

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from conftest import make_pair
from test_datapath import SocketBind

from pilotif.daemon.datapath import DataPath
from pilotif.packet.ip import BytesLike
from pilotif.userspace import UserspaceStack
from pilotif.userspace.expose import Expose, Exposer
from pilotif.userspace.stack import STREAM_LIMIT_BYTES, Address
from pilotif.userspace.transport import READ_CHUNK_BYTES
from pilotif.wg.events import Endpoint, PeerEndpoint
from pilotif.wg.fastpath.batch_loops import seal_tso

WAIT_S = 30.0
"""The generous bound on anything the tests wait for."""
PORT = 1000


class LinkedBind(SocketBind):
    """test_datapath's SocketBind whose sends arrive at another one's, one datagram per
    receive (its wake-up socket does not block when many wait)."""

    def __init__(self, source: Endpoint) -> None:
        super().__init__()
        self._writer.setblocking(False)
        self.source = source
        self.other: LinkedBind | None = None
        self.drop_next = 0
        """Datagrams to lose (from the next send on)."""
        self.trains = 0
        """GSO trains sent (a large segment of the netstack, cut and sealed natively)."""

    def send_train(self, train: memoryview, size: int, endpoint: PeerEndpoint) -> int:
        self.trains += 1
        return super().send_train(train, size, endpoint)

    def send(self, datagrams: Sequence[tuple[BytesLike, PeerEndpoint]]) -> int:
        assert self.other is not None
        for data, _ in datagrams:
            if self.drop_next:
                self.drop_next -= 1
                continue
            self.other.arrive_one(bytes(data), self.source)
        return 0

    def arrive_one(self, datagram: bytes, source: Endpoint) -> None:
        self._arrivals.append((memoryview(datagram), 0, source))
        with contextlib.suppress(BlockingIOError):
            self._writer.send(b"\x01")


class Side:
    def __init__(self, stack: UserspaceStack, datapath: DataPath, bind: LinkedBind) -> None:
        self.stack = stack
        self.datapath = datapath
        self.bind = bind


@contextlib.asynccontextmanager
async def two_sides() -> AsyncIterator[tuple[Side, Side]]:
    loop = asyncio.get_running_loop()
    a, b = make_pair()
    binds = LinkedBind(a.endpoint), LinkedBind(b.endpoint)
    binds[0].other, binds[1].other = binds[1], binds[0]
    built = []
    for node, bind in zip((a, b), binds, strict=True):
        datapath = DataPath(node.device, bind, loop, lambda event: None)
        stack = UserspaceStack([node.v4, node.v6], loop)
        datapath.start_stack(stack)
        stack.wake_with(datapath.read_stack)  # as the daemon does
        built.append(Side(stack, datapath, bind))
    try:
        yield built[0], built[1]
    finally:
        for side in built:
            side.datapath.close()
            side.stack.close()
            side.bind.close()


def run(body: Callable[[Side, Side], Awaitable[None]]) -> None:
    """Run a test's body on a fresh event loop with two sides built for it."""

    async def main() -> None:
        async with two_sides() as (a, b):
            await body(a, b)

    asyncio.run(main())


async def echo_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_tcp_through_two_devices_carries_bytes_intact() -> None:
    async def body(a: Side, b: Side) -> None:
        await b.stack.start_server(echo_server, PORT)
        payload = os.urandom(3 * 1024 * 1024 + 17)
        async with asyncio.timeout(WAIT_S):
            reader, writer = await a.stack.open_connection(b.stack.addresses[0], PORT)

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            sending = asyncio.ensure_future(send())
            received = await reader.read(-1)
            await sending
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        assert writer.get_extra_info("peername") == (str(b.stack.addresses[0]), PORT)
        if seal_tso is not None:
            assert a.bind.trains and b.bind.trains, "large segments sealed as GSO trains"
        writer.close()

    run(body)


async def _echoed_with_three_lost(a: Side, b: Side, address: Address, size: int) -> bool:
    """Whether `size` bytes sent from a to b's echo server at `address` come back whole,
    the first three of a's datagrams lost."""
    await b.stack.start_server(echo_server, PORT)
    async with asyncio.timeout(WAIT_S):
        reader, writer = await a.stack.open_connection(address, PORT)
        a.bind.drop_next = 3
        writer.write(b"x" * size)
        writer.write_eof()
        return await reader.read(-1) == b"x" * size


def test_the_stack_calls_the_data_path_without_its_fd() -> None:
    """Writes from the application's tasks, the peer's ACKs and the retransmission timer
    (datagrams lost) all reach the data path through `wake_with` alone."""

    async def body(a: Side, b: Side) -> None:
        loop = asyncio.get_running_loop()
        for side in (a, b):
            loop.remove_reader(side.stack.fileno())
        assert await _echoed_with_three_lost(a, b, b.stack.addresses[0], 300_000)

    run(body)


def test_tcp_over_ipv6_and_with_lost_datagrams() -> None:
    async def body(a: Side, b: Side) -> None:
        assert await _echoed_with_three_lost(a, b, b.stack.addresses[1], 200_000)

    run(body)


def test_a_port_nobody_serves_is_refused() -> None:
    async def body(a: Side, b: Side) -> None:
        with pytest.raises(ConnectionRefusedError):
            async with asyncio.timeout(WAIT_S):
                await a.stack.open_connection(b.stack.addresses[0], PORT + 1)

    run(body)


def test_a_reset_reaches_the_reader() -> None:
    async def body(a: Side, b: Side) -> None:
        accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer)

        await b.stack.start_server(hold, PORT)
        async with asyncio.timeout(WAIT_S):
            reader, _ = await a.stack.open_connection(b.stack.addresses[0], PORT)
            (await accepted).transport.abort()
            with pytest.raises(ConnectionResetError):
                await reader.read(1)

    run(body)


def test_ping_is_answered_by_the_peer_stack() -> None:
    async def body(a: Side, b: Side) -> None:
        rtt = await a.stack.ping(b.stack.addresses[0], WAIT_S)  # type: ignore[arg-type]
        assert rtt is not None and rtt >= 0
        assert b.stack.stack.counters["echo_answered"] == 1

    run(body)


def test_a_paused_reader_holds_the_sender_back() -> None:
    """The server reads nothing for a while: its stack's receive buffer fills and the
    window closes (the sender is held back; nothing piles up beyond asyncio's reader
    limit), and everything arrives once it reads."""

    async def body(a: Side, b: Side) -> None:
        start_reading = asyncio.Event()
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        readers: list[asyncio.StreamReader] = []

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            readers.append(reader)
            await start_reading.wait()
            got.set_result(await reader.read(-1))

        await b.stack.start_server(slow, PORT)
        window = b.stack.stack.config.receive_buffer_bytes
        size = 2 * (window + a.stack.stack.config.send_buffer_bytes)  # more than both hold
        async with asyncio.timeout(WAIT_S):
            _, writer = await a.stack.open_connection(b.stack.addresses[0], PORT)
            writer.write(bytes(size))
            draining = asyncio.ensure_future(writer.drain())
            while not any(c.readable_bytes >= window - c.mss for c in b.stack._transports):
                await asyncio.sleep(0.01)  # until the receiver's buffer is full
            assert not draining.done()
            assert len(readers[0]._buffer) <= 2 * STREAM_LIMIT_BYTES + READ_CHUNK_BYTES
            start_reading.set()
            await draining
            writer.write_eof()
            assert len(await got) == size

    run(body)


def test_an_exposed_port_is_spliced_to_a_local_server_both_ways() -> None:
    """The client's end of data reaches the local server through the splice while the
    answer still comes back (more than the transports' high-water marks), then both end."""

    async def body(a: Side, b: Side) -> None:
        async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.read(-1)).upper())
            await writer.drain()
            writer.close()

        local = await asyncio.start_server(shout, "127.0.0.1", 0)
        exposer = Exposer(Expose(PORT, local.sockets[0].getsockname()[1]))
        await b.stack.start_server(exposer.handle, PORT)
        request = os.urandom(1024 * 1024).hex().encode()
        async with asyncio.timeout(WAIT_S):
            reader, writer = await a.stack.open_connection(b.stack.addresses[0], PORT)
            writer.write(request)
            writer.write_eof()
            assert await reader.read(-1) == request.upper()
            writer.close()
        local.close()
        assert exposer.counters["connected"] == 1

    run(body)
