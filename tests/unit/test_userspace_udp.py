"""UDP between two userspace nodes (each a UserspaceStack with its data path and
WireGuard device, their Binds linked in memory; test_userspace_stack's harness): datagrams
through both devices intact over IPv4 and IPv6 and the answers back (`open_udp`,
`send`, `recv`); UDP never reaches the TCP stack; a port nobody bound answers port
unreachable, which the sender's endpoint raises (ConnectionRefusedError); a closed
endpoint's recv raises; a taken port is refused."""

import asyncio
import os
from ipaddress import IPv4Address

import pytest
from test_userspace_stack import WAIT_S, Side, run

from pilotif.userspace import UserspaceStack

PORT = 5300
A_V4 = IPv4Address("100.64.0.1")
B_V4 = IPv4Address("100.64.0.2")


@pytest.mark.parametrize("family", [0, 1])
def test_datagrams_cross_both_devices_intact_and_come_back(family: int) -> None:
    async def body(a: Side, b: Side) -> None:
        server = b.stack.open_udp(PORT)
        client = a.stack.open_udp()
        payloads = [os.urandom(n) for n in (1, 100, 1000, 1300 - 40 * family)]
        async with asyncio.timeout(WAIT_S):
            for payload in payloads:
                assert client.send(payload, (b.stack.addresses[family], PORT))
                data, sender = await server.recv()
                assert data == payload
                assert sender == (str(a.stack.addresses[family]), client.port)
                server.send(data[::-1], sender)
                answer, replier = await client.recv()
                assert answer == payload[::-1]
                assert replier == (str(b.stack.addresses[family]), PORT)
        for side in (a, b):
            assert side.stack.stack.counters["not_tcp"] == 0
            assert not side.stack.udp.counters

    run(body)


@pytest.mark.parametrize("family", [0, 1])
def test_a_port_nobody_bound_refuses_and_the_sender_learns_it(family: int) -> None:
    """B answers port unreachable (ICMPv6's too); A's endpoint raises it at its next recv,
    as a connected Linux socket would, and goes on working; A's TCP stack never sees it."""

    async def body(a: Side, b: Side) -> None:
        client = a.stack.open_udp()
        peer = b.stack.addresses[family]
        client.send(b"anyone?", (peer, PORT))
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(ConnectionRefusedError, match=f"port {PORT} of {peer}"):
                await client.recv()
        assert b.stack.udp.counters["no_socket"] == 1
        assert a.stack.udp.counters["icmp_port_unreachable"] == 1
        assert not a.stack.stack.counters  # not counted as not_tcp (or anything) by TCP
        server = b.stack.open_udp(PORT)
        client.send(b"now?", (peer, PORT))
        async with asyncio.timeout(WAIT_S):
            data, sender = await server.recv()
            server.send(data[::-1], sender)
            assert await client.recv() == (b"?won", (str(peer), PORT))

    run(body)


def test_a_closed_endpoint_stops_receiving_and_frees_its_port() -> None:
    async def body(a: Side, b: Side) -> None:
        server = b.stack.open_udp(PORT)
        with pytest.raises(OSError, match="already bound"):
            b.stack.open_udp(PORT)
        waiting = asyncio.ensure_future(server.recv())
        await asyncio.sleep(0)
        server.close()
        with pytest.raises(ConnectionAbortedError):
            async with asyncio.timeout(WAIT_S):
                await waiting
        assert b.stack.open_udp(PORT).port == PORT

    run(body)


def test_datagrams_sent_while_the_data_path_reads_are_all_read() -> None:
    """The data path reads until the stack says it is drained: a datagram sent between
    two of its reads must not be left behind."""

    async def main() -> None:
        stack = UserspaceStack([A_V4], asyncio.get_running_loop())
        try:
            endpoint = stack.open_udp()
            for _ in range(3):
                endpoint.send(b"early", (B_V4, PORT))
            read = list(stack.read_batch(1))
            endpoint.send(b"late", (B_V4, PORT))
            while not stack.drained:
                batch = stack.read_batch(1)
                assert isinstance(batch, list)
                read += batch
            assert [bytes(packet[-4:]) for packet in read] == [b"arly"] * 3 + [b"late"]
        finally:
            stack.close()

    asyncio.run(main())


def test_with_a_resolver_peers_are_named_and_strangers_refused() -> None:
    async def body(a: Side, b: Side) -> None:
        server = b.stack.open_udp(PORT)
        trusted = {"beta": b.stack.addresses[0]}
        client = a.stack.open_udp(resolve=trusted.get)
        assert client.send(b"by name", ("beta", PORT))
        with pytest.raises(ValueError, match="not a trusted peer"):
            client.send(b"x", ("mallory", PORT))
        async with asyncio.timeout(WAIT_S):
            data, _ = await server.recv()
        assert data == b"by name"

    run(body)
