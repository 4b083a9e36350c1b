"""The splice (pilotif.userspace.splice) between a client and a far server on loopback,
through a proxy that reads a handshake first: what the proxy's readers held is passed on,
an end of data one way leaves the other way open, a reset ends both, a side that does not
read holds the other back (and ends it when it is lost meanwhile), and no task copies
bytes."""

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pilotif.userspace.splice import splice

WAIT_S = 20.0
"""The generous bound on anything the tests wait for."""
HELLO = b"hello"
"""The proxy's handshake: it reads these bytes from the client before it splices."""
BANNER = b"BANNER"
"""What the far server writes as soon as it accepts; the proxy reads its first 2 bytes."""
QUIET_CHECKS = 20
SOCKET_READ_BYTES = 256 * 1024
"""The most asyncio's socket transport reads at once."""
"""Checks in a row without progress that count as a sender held back."""


@dataclass
class World:
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    far: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    proxy_writers: list[asyncio.StreamWriter]
    """The proxy's writers: to the client, then to the far server."""
    spliced: asyncio.Future[None]
    """Done when the proxy's splice returned."""


Far = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def spliced(first: bytes = HELLO) -> AsyncIterator[World]:
    """A client connected through a proxy to a far server; the client sent `first`."""
    loop = asyncio.get_running_loop()
    far_streams: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    far_streams = loop.create_future()
    done: asyncio.Future[None] = loop.create_future()
    splicing: asyncio.Future[None] = loop.create_future()
    proxy_writers: list[asyncio.StreamWriter] = []

    async def far(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(BANNER)
        far_streams.set_result((reader, writer))

    far_server = await asyncio.start_server(far, "127.0.0.1", 0)
    far_port = far_server.sockets[0].getsockname()[1]

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(len(HELLO)) == HELLO
        remote = await asyncio.open_connection("127.0.0.1", far_port)
        assert await remote[0].readexactly(2) == BANNER[:2]
        proxy_writers.extend((writer, remote[1]))
        splicing.set_result(None)
        try:
            await splice((reader, writer), remote)
        finally:
            done.set_result(None)

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    try:
        async with asyncio.timeout(WAIT_S):
            client = await asyncio.open_connection(
                "127.0.0.1", proxy_server.sockets[0].getsockname()[1]
            )
            client[1].write(first)
            far_side = await far_streams
            await splicing
            yield World(client, far_side, proxy_writers, done)
    finally:
        proxy_server.close()
        far_server.close()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_what_the_readers_held_before_the_splice_is_passed_on() -> None:
    async def body() -> None:
        async with spliced(HELLO + b"WORLD") as world:
            assert await world.far[0].readexactly(5) == b"WORLD"
            assert await world.client[0].readexactly(4) == BANNER[2:]

    run(body)


def test_an_end_of_data_one_way_leaves_the_other_way_open() -> None:
    async def body() -> None:
        async with spliced() as world:
            client_reader, client_writer = world.client
            client_writer.write(b"request")
            client_writer.write_eof()
            far_reader, far_writer = world.far
            assert await far_reader.read(-1) == b"request"  # the end of data came through
            far_writer.write(b"answer")
            await far_writer.drain()
            assert await client_reader.readexactly(len(BANNER) - 2 + 6) == b"NNERanswer"
            far_writer.close()
            assert await client_reader.read(-1) == b""
            await world.spliced

    run(body)


def test_a_reset_on_one_side_ends_the_other() -> None:
    async def body() -> None:
        async with spliced() as world:
            client_reader, client_writer = world.client
            assert await client_reader.readexactly(4) == BANNER[2:]
            far_socket = world.far[1].get_extra_info("socket")
            far_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            world.far[1].transport.abort()  # a reset
            await world.spliced
            assert all(writer.is_closing() for writer in world.proxy_writers)
            assert await client_reader.read(-1) == b""  # not left open for writing
            client_writer.close()

    run(body)


def test_a_side_that_does_not_read_holds_the_other_back() -> None:
    async def body() -> None:
        async with spliced() as world:
            client_writer = world.client[1]
            payload = os.urandom(32 * 1024 * 1024)
            client_writer.write(payload)
            client_transport = client_writer.transport
            left, quiet = client_transport.get_write_buffer_size(), 0
            while quiet < QUIET_CHECKS:  # until the client cannot send more
                await asyncio.sleep(0.01)
                now = client_transport.get_write_buffer_size()
                left, quiet = now, (quiet + 1 if now == left else 0)
            assert left > 0, "the far server did not read, yet everything was sent"
            to_far = world.proxy_writers[1].transport
            high = to_far.get_write_buffer_limits()[1]
            assert to_far.get_write_buffer_size() <= high + SOCKET_READ_BYTES
            client_writer.write_eof()
            far_reader = world.far[0]
            received = await far_reader.read(-1)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            client_writer.close()

    run(body)


def test_a_side_lost_while_holding_the_other_back_ends_it() -> None:
    """The far connection is lost on the proxy's side (as when a userspace node's stack
    stops) while the client is held back: the client's connection ends too."""

    async def body() -> None:
        async with spliced() as world:
            client_writer = world.client[1]
            client_writer.write(bytes(32 * 1024 * 1024))
            to_far = world.proxy_writers[1].transport
            while to_far.get_write_buffer_size() <= to_far.get_write_buffer_limits()[1]:
                await asyncio.sleep(0.01)  # until the client is held back
            to_far.abort()
            await world.spliced
            assert world.proxy_writers[0].is_closing()
            client_writer.close()

    run(body)


def test_no_task_copies_the_bytes() -> None:
    async def body() -> None:
        async with spliced() as world:
            client_writer = world.client[1]
            client_writer.write(b"ping")
            assert await world.far[0].readexactly(4) == b"ping"
            names = {task.get_coro().__qualname__ for task in asyncio.all_tasks()}
            assert names == {
                "test_no_task_copies_the_bytes.<locals>.body",
                "spliced.<locals>.proxy",
            }
            client_writer.close()
            world.far[1].close()
            await world.spliced

    run(body)
