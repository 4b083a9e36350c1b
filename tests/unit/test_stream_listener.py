"""The stream listener of the registry and relays on loopback TCP: a relay core answers
over a stream as over UDP (the cookie first), answers go down the stream of their
source, and each bound of the public surface holds (connections per address and in all,
frame size, bytes waiting for a reader, openings that trickle, idle streams)."""

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from pilotif.control import forwarder
from pilotif.control.counter_lease import CounterLease
from pilotif.control.gate import Outgoing
from pilotif.control.shell import CoreProtocol, serve_streams, serve_until_stopped, serving_udp
from pilotif.control.stream_listener import StreamLimits
from pilotif.control.tickets import TICKET_LIFETIME_S, issue_ticket, ticket_key
from pilotif.control.wire import RELAY_TYPE, pack_relay, unpack_relay
from pilotif.net.stream import MAX_FRAME_BYTES, FrameReader, frame
from pilotif.net.upgrade import upgrade_opening
from pilotif.node.registry_link import RegistryLink, Reply
from pilotif.relay.core import RelayCore
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.events import Endpoint

WAIT_S = 20.0
"""The most any test waits for what it expects (the machine may be slow)."""
DATAGRAM = bytes((4, 0, 0, 0)) + bytes(60)


class EchoCore:
    """A core that answers each datagram to its source `copies` times, and a datagram
    starting 0x51 also to the UDP endpoint `elsewhere`."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.heard: list[tuple[bytes, Endpoint]] = []
        self.copies = 1
        self.elsewhere: Endpoint | None = None

    @property
    def counter(self) -> int:
        return 0

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        self.heard.append((data, source))
        out = [(data, source)] * self.copies
        if data[0] == RELAY_TYPE and self.elsewhere is not None:
            out.append((data, self.elsewhere))
        return out

    def waited(self, delay_s: float, now: float) -> None:
        pass

    def drained(self, now: float) -> None:
        pass

    def urgent(self, data: bytes) -> bool:
        return False


Core = EchoCore | RelayCore


@asynccontextmanager
async def serving(
    core: Core, tmp_path: Path, limits: StreamLimits | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[Endpoint, CoreProtocol]]:
    """`core` on a UDP socket at `host` and a stream listener on the same port: where."""
    lease = CounterLease(tmp_path / "counter")
    with serving_udp(core, lease, (host, 0)) as (protocol, at):
        servers = await serve_streams(protocol, core.counters, (at,), limits)
        try:
            yield at, protocol
        finally:
            for server in servers:
                server.close()
            assert protocol.streams is not None
            protocol.streams.close()


class Client:
    """A node's end of a stream, opened by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameReader()
        self.endpoint: Endpoint = writer.get_extra_info("sockname")[:2]

    @classmethod
    async def open(cls, at: Endpoint, upgrade: bool = True) -> "Client":
        reader, writer = await asyncio.open_connection(*at)
        client = cls(reader, writer)
        if upgrade:
            opening = upgrade_opening(f"{at[0]}:{at[1]}")
            writer.write(opening.request)
            answer = None
            while answer is None:
                data = await asyncio.wait_for(reader.read(4096), WAIT_S)
                assert data, "closed during the opening"
                answer = opening.feed(data)
            assert answer[0] == 101
            client.frames.feed(answer[1])
        return client

    def send(self, datagram: bytes) -> None:
        self.writer.write(frame(datagram))

    async def receive(self) -> bytes:
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT_S)
            assert data, "the stream closed"
            out = self.frames.feed(data)
            if out:
                assert len(out) == 1
                return out[0]

    async def closed(self) -> bool:
        """Whether the listener closes the stream (waits up to WAIT_S, reading all)."""
        try:
            async with asyncio.timeout(WAIT_S):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_a_datagram_from_a_stream_is_answered_down_that_stream(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        async with serving(core, tmp_path) as (at, _):
            one, two = await Client.open(at), await Client.open(at)
            one.send(b"\x50one")
            two.send(b"\x50two")
            assert await one.receive() == b"\x50one"
            assert await two.receive() == b"\x50two"
            assert [source for _, source in core.heard] == [one.endpoint, two.endpoint]
            one.close()
            two.close()

    run(test)
    assert core.counters["stream_opened"] == 2


def test_what_goes_to_a_udp_endpoint_leaves_on_the_socket(tmp_path: Path) -> None:
    core = EchoCore()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(WAIT_S)
        core.elsewhere = udp.getsockname()

        async def test() -> None:
            async with serving(core, tmp_path) as (at, _):
                client = await Client.open(at)
                client.send(b"\x51relayed")
                assert await client.receive() == b"\x51relayed"
                data = await asyncio.get_running_loop().run_in_executor(None, udp.recv, 100)
                assert data == b"\x51relayed"
                client.close()

        run(test)


class StreamNode:
    """A node's RegistryLink to a relay, its datagrams over one stream."""

    def __init__(self, relay: RelayCore, at: Endpoint) -> None:
        self.private = generate_private_key()
        self.key = public_key(self.private)
        self.link = RegistryLink(self.private, at, relay.public_key, first_counter=0, first_id=1)
        self.instance: int | None = None
        self.client: Client | None = None

    async def request(self, fields: dict[str, Any], now: float) -> dict[str, Any]:
        assert self.client is not None
        request_id = self.link.request("attach", {"instance": self.instance, **fields}, now)
        while True:
            out, self.link.outgoing = self.link.outgoing, []
            for data, _ in out:
                self.client.send(data)
            for item in self.link.receive(await self.client.receive(), now, None):
                if isinstance(item, Reply) and item.request_id == request_id:
                    instance = item.message.get("instance")
                    self.instance = instance if isinstance(instance, int) else None
                    return item.message


def test_a_relay_asks_a_stream_the_same_cookie_before_any_key_work(tmp_path: Path) -> None:
    registry = generate_private_key()
    relay = RelayCore(generate_private_key(), public_key(registry), first_counter=0)
    keys = ticket_key(registry, relay.public_key)

    async def test() -> None:
        async with serving(relay, tmp_path) as (at, _):
            alice, bob = StreamNode(relay, at), StreamNode(relay, at)
            for node, peer in ((alice, bob), (bob, alice)):
                node.client = await Client.open(at)
                wall = time.time()  # the shell gives the core the wall clock
                ticket = issue_ticket(keys, node.key, peer.key, int(wall + TICKET_LIFETIME_S))
                assert (await node.request({}, wall))["code"] == "new_instance"
                reply = await node.request({"tickets": [ticket]}, wall)
                assert reply["ok"] and reply["accepted"] == 1
            assert relay.counters["cookie_replies"] == 2
            assert alice.client is not None and bob.client is not None
            alice.client.send(pack_relay(bob.key, DATAGRAM))
            assert unpack_relay(await bob.client.receive()) == (alice.key, DATAGRAM)
            alice.client.close()
            bob.client.close()

    run(test)
    assert relay.counters["relayed_packets"] == 1


def test_a_first_message_without_the_cookie_costs_no_key_work(tmp_path: Path) -> None:
    registry = generate_private_key()
    relay = RelayCore(generate_private_key(), public_key(registry), first_counter=0)

    async def test() -> None:
        async with serving(relay, tmp_path) as (at, _):
            node = StreamNode(relay, at)
            node.client = await Client.open(at)
            node.link.request("attach", {"instance": None}, 1_700_000_000.0)
            [(data, _)] = node.link.outgoing
            node.client.send(data)
            answer = await node.client.receive()
            assert answer[0] != 0x50  # a cookie reply, not a sealed answer
            node.client.close()

    run(test)
    assert relay.counters["cookie_replies"] == 1
    assert len(relay._front.channels) == 0


def test_relayed_bytes_over_a_stream_meet_the_per_source_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forwarder, "RELAY_BURST_PACKETS", 5.0)
    monkeypatch.setattr(forwarder, "RELAY_PACKETS_PER_S", 0.001)
    relay = RelayCore(generate_private_key(), public_key(generate_private_key()), first_counter=0)

    async def test() -> None:
        async with serving(relay, tmp_path) as (at, _):
            client = await Client.open(at)
            for _ in range(8):
                client.send(pack_relay(bytes(32), DATAGRAM))
            async with asyncio.timeout(WAIT_S):
                while relay.counters["relay_rate_limited"] < 3:
                    await asyncio.sleep(0.01)
            client.close()

    run(test)
    assert relay.counters["relay_unknown_source"] == 5
    assert relay.counters["relay_rate_limited"] == 3


def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        async with serving(core, tmp_path, StreamLimits(max_per_address=2)) as (at, _):
            kept = [await Client.open(at), await Client.open(at)]
            extra = await Client.open(at, upgrade=False)
            assert await extra.closed()
            kept[0].close()
            async with asyncio.timeout(WAIT_S):
                while True:
                    again = await Client.open(at, upgrade=False)
                    again.writer.write(upgrade_opening("x:1").request)
                    if await again.reader.read(100):
                        break
                    await asyncio.sleep(0.05)
            again.close()
            kept[1].close()

    run(test)
    assert core.counters["stream_too_many_from_address"] >= 1


def test_connections_in_all_are_capped(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        limits = StreamLimits(max_streams=3, max_per_address=100)
        async with serving(core, tmp_path, limits) as (at, _):
            kept = [await Client.open(at) for _ in range(3)]
            extra = await Client.open(at, upgrade=False)
            assert await extra.closed()
            for client in kept:
                client.close()

    run(test)
    assert core.counters["stream_too_many"] == 1


def test_a_frame_over_the_limit_closes_the_stream(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        async with serving(core, tmp_path) as (at, _):
            client = await Client.open(at)
            client.writer.write((MAX_FRAME_BYTES + 1).to_bytes(2, "big") + bytes(100))
            assert await client.closed()

    run(test)
    assert core.counters["stream_frame_too_large"] == 1
    assert core.heard == []


def test_an_opening_that_trickles_is_cut(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        async with serving(core, tmp_path, StreamLimits(opening_s=0.5)) as (at, _):
            client = await Client.open(at, upgrade=False)
            request = upgrade_opening("x:1").request
            closed = asyncio.create_task(client.closed())
            for byte in request[:-4]:
                if closed.done():
                    break
                client.writer.write(bytes((byte,)))
                await asyncio.sleep(0.05)
            assert await closed

    run(test)
    assert core.counters["stream_opening_timeout"] == 1


def test_a_silent_stream_is_closed(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        async with serving(core, tmp_path, StreamLimits(idle_s=0.5)) as (at, protocol):
            client = await Client.open(at)
            client.send(b"\x50hello")
            assert await client.receive() == b"\x50hello"
            assert await client.closed()
            assert protocol.streams is not None and not protocol.streams.streams

    run(test)
    assert core.counters["stream_idle"] == 1


def test_a_reader_that_does_not_read_is_dropped(tmp_path: Path) -> None:
    core = EchoCore()
    core.copies = 50

    async def test() -> None:
        limits = StreamLimits(max_buffered_bytes=64 * 1024)
        async with serving(core, tmp_path, limits) as (at, protocol):
            client = await Client.open(at)
            async with asyncio.timeout(WAIT_S):
                while not core.counters["stream_slow_reader"]:
                    client.send(b"\x50" + bytes(MAX_FRAME_BYTES - 1))
                    await client.writer.drain()
                    await asyncio.sleep(0.01)
            assert protocol.streams is not None and not protocol.streams.streams
            client.writer.transport.abort()

    run(test)
    assert core.counters["stream_slow_reader"] == 1


def test_garbage_instead_of_the_opening_closes_the_stream(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        async with serving(core, tmp_path) as (at, _):
            client = await Client.open(at, upgrade=False)
            client.writer.write(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n")
            assert await client.closed()
            web = await Client.open(at, upgrade=False)
            web.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await web.reader.read(100)).startswith(b"HTTP/1.1 404 ")
            web.close()

    run(test)
    assert core.counters["stream_bad_request"] == 1
    assert core.counters["stream_not_an_upgrade"] == 1
    assert core.heard == []


def free_port() -> int:
    """A port free for UDP and TCP on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        return int(tcp.getsockname()[1])


def test_a_service_takes_streams_on_its_udp_port_and_on_another(tmp_path: Path) -> None:
    core = EchoCore()
    udp_port, other_port = free_port(), free_port()

    async def test() -> None:
        lease = CounterLease(tmp_path / "counter")
        extra = (("127.0.0.1", other_port),)
        serving = asyncio.create_task(
            serve_until_stopped(core, lease, ("127.0.0.1", udp_port), [], tcp_listens=extra)
        )
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    try:
                        same = await Client.open(("127.0.0.1", udp_port))
                        break
                    except ConnectionRefusedError:
                        await asyncio.sleep(0.05)
            other = await Client.open(("127.0.0.1", other_port))
            for client in (same, other):
                client.send(b"\x50hi")
                assert await client.receive() == b"\x50hi"
                client.close()
        finally:
            serving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await serving

    run(test)


def test_listening_on_any_ipv6_address_takes_ipv4_streams_too(tmp_path: Path) -> None:
    core = EchoCore()

    async def test() -> None:
        async with serving(core, tmp_path, host="::") as ((_, port), _):
            for host in ("127.0.0.1", "::1"):
                client = await Client.open((host, port))
                client.send(b"\x50hi")
                assert await client.receive() == b"\x50hi"
                client.close()

    run(test)
    assert core.heard[0][1][0] == "127.0.0.1"
