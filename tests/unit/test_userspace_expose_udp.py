"""`--expose-udp` (pilotif/userspace/expose_udp.py): a peer's datagrams to the node's
overlay UDP port reach a local UDP server and its answers come back, one local socket
per peer flow; the flow table closes idle flows and keeps at most its cap (the least
recently used goes first); a local port nobody serves is counted."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

from test_userspace_stack import WAIT_S, Side, run

from pilotif.userspace.expose import Expose
from pilotif.userspace.expose_udp import FLOW_IDLE_S, FlowTable, UdpExposer

PORT = 5353


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.senders: set[tuple[str, int]] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.senders.add(addr)
        assert self.transport is not None
        self.transport.sendto(b"echo " + data, addr)


@contextlib.asynccontextmanager
async def exposed(
    b: Side, local_port: int, idle_s: float = FLOW_IDLE_S
) -> AsyncIterator[UdpExposer]:
    exposer = UdpExposer(Expose(PORT, local_port), b.stack.open_udp(PORT), idle_s)
    task = asyncio.ensure_future(exposer.run())
    try:
        yield exposer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_peers_reach_a_local_udp_server_and_get_its_answers() -> None:
    async def body(a: Side, b: Side) -> None:
        loop = asyncio.get_running_loop()
        transport, echo = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        local_port = transport.get_extra_info("sockname")[1]
        try:
            async with exposed(b, local_port) as exposer, asyncio.timeout(WAIT_S):
                first, second = a.stack.open_udp(), a.stack.open_udp()
                for client in (first, second, first):
                    client.send(b"hi", (b.stack.addresses[0], PORT))
                    data, sender = await client.recv()
                    assert data == b"echo hi"
                    assert sender == (str(b.stack.addresses[0]), PORT)
                assert len(echo.senders) == 2 and exposer.flow_count == 2
                assert exposer.counters["flow_opened"] == 2
                assert exposer.counters["forwarded"] == exposer.counters["answered"] == 3
            assert exposer.flow_count == 0 and exposer.counters["flow_closed"] == 2
        finally:
            transport.close()

    run(body)


def test_an_idle_flow_is_closed_and_a_new_one_opens_when_the_peer_comes_back() -> None:
    async def body(a: Side, b: Side) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        local_port = transport.get_extra_info("sockname")[1]
        try:
            async with exposed(b, local_port, idle_s=0.2) as exposer, asyncio.timeout(WAIT_S):
                client = a.stack.open_udp()
                client.send(b"one", (b.stack.addresses[0], PORT))
                assert (await client.recv())[0] == b"echo one"
                while exposer.flow_count:
                    await asyncio.sleep(0.05)
                assert exposer.counters["flow_expired"] == 1
                client.send(b"two", (b.stack.addresses[0], PORT))
                assert (await client.recv())[0] == b"echo two"
                assert exposer.counters["flow_opened"] == 2
        finally:
            transport.close()

    run(body)


def test_a_local_port_nobody_serves_is_counted() -> None:
    async def body(a: Side, b: Side) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        closed_port = transport.get_extra_info("sockname")[1]
        transport.close()
        async with exposed(b, closed_port) as exposer, asyncio.timeout(WAIT_S):
            client = a.stack.open_udp()
            while not exposer.counters["local_refused"]:
                client.send(b"anyone?", (b.stack.addresses[0], PORT))
                await asyncio.sleep(0.05)

    run(body)


def test_idle_flows_expire_and_the_cap_evicts_the_least_recently_used() -> None:
    table: FlowTable[str] = FlowTable(limit=2, idle_s=10.0)
    assert table.add(("a", 1), "flow a", 0.0) == []
    assert table.add(("b", 1), "flow b", 1.0) == []
    assert table.get(("a", 1), 2.0) == "flow a"  # a is now the most recently used
    assert table.add(("c", 1), "flow c", 3.0) == ["flow b"]
    assert table.get(("b", 1), 3.0) is None
    assert table.expire(11.9) == []
    table.touch(("a", 1), 5.0)
    assert table.expire(13.0) == ["flow c"]  # c idle since 3.0; a used at 5.0
    assert table.expire(15.0) == ["flow a"] and len(table) == 0
