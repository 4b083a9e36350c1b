"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) of the userspace node's SOCKS5 server,
against raw clients on loopback and an overlay that is in memory: the UDP header read
from hostile bytes (truncated, fragments, unknown address types) raises only its own
error; datagrams reach the overlay by name and come back naming the peer; only the
client's datagrams are taken; the association ends with its TCP connection; the login
applies as for CONNECT."""

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_userspace_proxies import CREDENTIALS, PEER, RESOLVE, WAIT_S, LoopbackNet

from pilotif.userspace.socks5 import Socks5Server
from pilotif.userspace.socks5_wire import (
    Socks5WireError,
    pack_address,
    parse_udp_datagram,
    udp_datagram_header,
)

PEER_PORT = 7
MAX_DATA = 1000
UDP_HEAD = b"\x00\x00\x00"
"""RSV and FRAG 0 of a whole datagram."""


class FakeOverlayUdp:
    """The node's UDP port, in memory: what is sent is kept, what peers send is queued."""

    port = 49999

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.inbox: asyncio.Queue[tuple[bytes, tuple[str, int]] | OSError] = asyncio.Queue()
        """What peers send, or an ICMP error's OSError for recv() to raise."""
        self.closed = False

    def send(self, data: bytes, address: tuple[str | IPv4Address | IPv6Address, int]) -> bool:
        if len(data) > MAX_DATA:
            raise ValueError("does not fit the overlay's MTU")
        self.sent.append((data, (str(address[0]), address[1])))
        return True

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        received = await self.inbox.get()
        if isinstance(received, OSError):
            raise received
        return received

    def close(self) -> None:
        self.closed = True


class FakeUdpNet:
    def __init__(self) -> None:
        self.opened: list[FakeOverlayUdp] = []

    def open_udp(self, port: int | None = None) -> FakeOverlayUdp:
        self.opened.append(FakeOverlayUdp())
        return self.opened[-1]


Body = Callable[[int, FakeUdpNet, Socks5Server], Awaitable[None]]


def run(body: Body, credentials: tuple[str, str] | None = None) -> None:
    async def main() -> None:
        udp = FakeUdpNet()
        server = Socks5Server(LoopbackNet(9), RESOLVE, credentials, udp=udp)
        proxy = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        try:
            async with asyncio.timeout(WAIT_S):
                await body(proxy.sockets[0].getsockname()[1], udp, server)
        finally:
            proxy.close()

    asyncio.run(main())


async def open_association(
    port: int, *, login: bytes = b"", from_port: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[str, int]]:
    """A control connection that asked for UDP ASSOCIATE, and the relay's address."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    method = b"\x02" if login else b"\x00"
    writer.write(b"\x05\x01" + method + login)
    writer.write(b"\x05\x03\x00\x01" + bytes(4) + struct.pack("!H", from_port))
    assert await reader.readexactly(2) == b"\x05" + method
    if login:
        assert await reader.readexactly(2) == b"\x01\x00"
    reply = await reader.readexactly(10)
    assert reply[:4] == b"\x05\x00\x00\x01"
    relay = (str(IPv4Address(reply[4:8])), struct.unpack("!H", reply[8:10])[0])
    return reader, writer, relay


def client_socket() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    return client


def to_name(name: bytes, port: int, data: bytes) -> bytes:
    return UDP_HEAD + b"\x03" + bytes([len(name)]) + name + struct.pack("!H", port) + data


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_datagrams_reach_the_peer_by_name_and_answers_come_back_naming_it() -> None:
    async def body(port: int, udp: FakeUdpNet, server: Socks5Server) -> None:
        _, writer, relay = await open_association(port)
        assert relay[0] == "127.0.0.1"
        client = client_socket()
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(client, to_name(b"beta.pilot", PEER_PORT, b"hello"), relay)
        numeric = UDP_HEAD + pack_address(PEER, PEER_PORT) + b"again"
        await loop.sock_sendto(client, numeric, relay)
        (overlay,) = udp.opened
        await until(lambda: len(overlay.sent) == 2)
        assert overlay.sent == [(b"hello", (str(PEER), PEER_PORT))] * 1 + [
            (b"again", (str(PEER), PEER_PORT))
        ]
        overlay.inbox.put_nowait((b"answer", (str(PEER), PEER_PORT)))
        datagram = await loop.sock_recv(client, 2048)
        assert datagram == udp_datagram_header(PEER, PEER_PORT) + b"answer"
        assert datagram[:10] == UDP_HEAD + b"\x01" + PEER.packed + struct.pack("!H", PEER_PORT)
        writer.close()
        await until(lambda: overlay.closed)
        assert server.counters["associated"] == 1
        client.close()

    run(body)


def test_an_icmp_error_about_a_datagram_is_counted_and_the_association_goes_on() -> None:
    async def body(port: int, udp: FakeUdpNet, server: Socks5Server) -> None:
        _, writer, relay = await open_association(port)
        client = client_socket()
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(client, to_name(b"beta.pilot", PEER_PORT, b"hello"), relay)
        (overlay,) = udp.opened
        await until(lambda: len(overlay.sent) == 1)
        overlay.inbox.put_nowait(ConnectionRefusedError(111, "nothing listens"))
        overlay.inbox.put_nowait((b"answer", (str(PEER), PEER_PORT)))
        datagram = await loop.sock_recv(client, 2048)
        assert datagram == udp_datagram_header(PEER, PEER_PORT) + b"answer"
        assert server.counters["udp_unreachable"] == 1
        writer.close()
        await until(lambda: overlay.closed)
        client.close()

    run(body)


def test_only_the_client_is_heard_and_bad_datagrams_are_counted() -> None:
    async def body(port: int, udp: FakeUdpNet, server: Socks5Server) -> None:
        client, stranger = client_socket(), client_socket()
        _, writer, relay = await open_association(port, from_port=client.getsockname()[1])
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(stranger, to_name(b"beta", PEER_PORT, b"not yours"), relay)
        for bad in (
            b"\x00\x00",  # truncated
            UDP_HEAD[:2] + b"\x01\x01" + PEER.packed + b"\0\7x",  # a fragment
            UDP_HEAD + b"\x09" + PEER.packed,  # an unknown address type
            UDP_HEAD + b"\x03\x30beta",  # a name longer than the datagram
            to_name(b"nobody.pilot", PEER_PORT, b"x"),
            to_name(b"beta", 0, b"x"),
            to_name(b"beta", PEER_PORT, bytes(MAX_DATA + 1)),
        ):
            await loop.sock_sendto(client, bad, relay)
        await loop.sock_sendto(client, to_name(b"beta", PEER_PORT, b"fine"), relay)
        (overlay,) = udp.opened
        await until(lambda: bool(overlay.sent))
        assert overlay.sent == [(b"fine", (str(PEER), PEER_PORT))]
        counters = server.counters
        assert counters["udp_not_client"] == 1
        assert counters["udp_truncated"] == 2
        assert counters["udp_fragment"] == 1
        assert counters["udp_address_type_unsupported"] == 1
        assert counters["udp_unknown_host"] == 2
        assert counters["udp_too_big"] == 1
        writer.close()
        client.close()
        stranger.close()

    run(body)


def test_answers_wait_for_the_client_to_speak_first() -> None:
    async def body(port: int, udp: FakeUdpNet, server: Socks5Server) -> None:
        _, writer, _ = await open_association(port)
        (overlay,) = udp.opened
        overlay.inbox.put_nowait((b"too early", (str(PEER), PEER_PORT)))
        await until(lambda: server.counters["udp_no_client_yet"] == 1)
        writer.close()

    run(body)


def test_a_node_out_of_udp_ports_answers_general_failure() -> None:
    class FullNet(FakeUdpNet):
        def open_udp(self, port: int | None = None) -> FakeOverlayUdp:
            raise OSError("too many UDP sockets")

    async def main() -> None:
        server = Socks5Server(LoopbackNet(9), RESOLVE, udp=FullNet())
        proxy = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(*proxy.sockets[0].getsockname())
            writer.write(b"\x05\x01\x00" + b"\x05\x03\x00\x01" + bytes(6))
            async with asyncio.timeout(WAIT_S):
                assert await reader.read(-1) == b"\x05\x00" + b"\x05\x01\x00\x01" + bytes(6)
            assert server.counters["associate_failed"] == 1
            writer.close()
        finally:
            proxy.close()

    asyncio.run(main())


def test_the_login_applies_to_udp_associate() -> None:
    async def body(port: int, udp: FakeUdpNet, server: Socks5Server) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01\x02" + b"\x01\x05agent\x05wrong")
        writer.write(b"\x05\x03\x00\x01" + bytes(6))
        assert await reader.read(-1) == b"\x05\x02\x01\x01"
        assert not udp.opened
        user, password = (part.encode() for part in CREDENTIALS)
        login = bytes([1, len(user)]) + user + bytes([len(password)]) + password
        _, writer, _ = await open_association(port, login=login)
        assert len(udp.opened) == 1
        writer.close()

    run(body, CREDENTIALS)


@pytest.mark.parametrize(
    ("address", "port"),
    [(IPv4Address("100.64.0.2"), 53), (IPv6Address("fd7a:115c:a1e0::2"), 65535)],
)
def test_a_header_the_relay_writes_reads_back(
    address: IPv4Address | IPv6Address, port: int
) -> None:
    host, got_port, data = parse_udp_datagram(udp_datagram_header(address, port) + b"data")
    assert (ip_address(host), got_port, bytes(data)) == (address, port, b"data")


def test_every_truncation_of_a_header_is_refused() -> None:
    whole = to_name(b"beta.pilot", 53, b"")
    for cut in range(len(whole)):
        with pytest.raises(Socks5WireError, match="truncated"):
            parse_udp_datagram(whole[:cut])
    assert parse_udp_datagram(whole)[:2] == ("beta.pilot", 53)


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_the_wire_error_only(data: bytes) -> None:
    try:
        host, port, payload = parse_udp_datagram(data)
    except Socks5WireError:
        return
    assert 0 <= port <= 0xFFFF and len(payload) <= len(data) and isinstance(host, str)
