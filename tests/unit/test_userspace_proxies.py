"""The userspace node's SOCKS5 server and HTTP proxy against raw clients on loopback,
with an overlay that is a local echo server (and a refusing port): the RFC 1928 / 1929
answers to every kind of bad input, the HTTP proxy's 400, 407 and 502, and what a plain
request looks like when it reaches the peer."""

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

from pilotif.services.overlay_net import ConnectedCallback, OverlayServer
from pilotif.userspace.http_proxy import HttpProxy
from pilotif.userspace.names import peer_resolver
from pilotif.userspace.socks5 import Socks5Server

WAIT_S = 20.0
PEER = IPv4Address("100.64.0.2")
REFUSED_PORT = 9
CREDENTIALS = ("agent", "s3cret")


class _Peer:
    hostname = "beta"
    ipv4 = PEER
    ipv6 = IPv6Address("fd00::2")


RESOLVE = peer_resolver(lambda: [_Peer()])


class LoopbackNet:
    """An overlay whose every peer port is one local server (REFUSED_PORT refuses)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened: list[tuple[str, int]] = []

    async def open_connection(
        self, address: str, port: int, *, limit: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened.append((address, port))
        if port == REFUSED_PORT:
            raise ConnectionRefusedError("refused")
        return await asyncio.open_connection("127.0.0.1", self.port, limit=limit)

    async def start_server(
        self, handler: ConnectedCallback, port: int, *, limit: int
    ) -> OverlayServer:
        raise NotImplementedError


Body = Callable[[int, LoopbackNet, list[bytes]], Awaitable[None]]


def run(make: Callable[[LoopbackNet], Callable[..., Awaitable[None]]], body: Body) -> None:
    """A peer (echoes, and keeps the first bytes it got), the proxy made by `make`, and
    `body(proxy_port, net, peer_heard)`."""

    async def main() -> None:
        heard: list[bytes] = []

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(65536)
            heard.append(data)
            writer.write(data)
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()

        peer_server = await asyncio.start_server(peer, "127.0.0.1", 0)
        net = LoopbackNet(peer_server.sockets[0].getsockname()[1])
        proxy = await asyncio.start_server(make(net), "127.0.0.1", 0)
        try:
            async with asyncio.timeout(WAIT_S):
                await body(proxy.sockets[0].getsockname()[1], net, heard)
        finally:
            proxy.close()
            peer_server.close()

    asyncio.run(main())


async def exchange(port: int, data: bytes, *, close: bool = False) -> bytes:
    """Send `data`, then read everything until the proxy closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if close:
        writer.write_eof()
    answer = await reader.read(-1)
    writer.close()
    return answer


def socks(
    credentials: tuple[str, str] | None = None,
) -> Callable[[LoopbackNet], Callable[..., Awaitable[None]]]:
    servers: list[Socks5Server] = []

    def make(net: LoopbackNet) -> Callable[..., Awaitable[None]]:
        servers.append(Socks5Server(net, RESOLVE, credentials))
        return servers[0].handle

    make.servers = servers  # type: ignore[attr-defined]
    return make


def connect_request(host: bytes, port: int, *, command: int = 1, kind: int = 3) -> bytes:
    address = bytes([len(host)]) + host if kind == 3 else host
    return bytes([5, command, 0, kind]) + address + struct.pack("!H", port)


def reply_code(answer: bytes, after: int = 2) -> int:
    """The REP field of the reply that follows `after` bytes of method selection."""
    return answer[after + 1]


def test_socks5_connect_by_name_carries_bytes() -> None:
    async def body(port: int, net: LoopbackNet, heard: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01\x00" + connect_request(b"beta.pilot", 8080))
        assert await reader.readexactly(2) == b"\x05\x00"
        reply = await reader.readexactly(10)
        assert reply[:4] == b"\x05\x00\x00\x01"
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        assert net.opened == [(str(PEER), 8080)]

    run(socks(), body)


def test_socks5_numeric_overlay_address_and_unknown_hosts() -> None:
    async def body(port: int, net: LoopbackNet, heard: list[bytes]) -> None:
        answer = await exchange(
            port, b"\x05\x01\x00" + connect_request(PEER.packed, 80, kind=1) + b"x", close=True
        )
        assert reply_code(answer) == 0
        for host in (b"nobody.pilot", b"100.64.0.99", b"example.com"):
            answer = await exchange(port, b"\x05\x01\x00" + connect_request(host, 80))
            assert reply_code(answer) == 4, host  # host unreachable

    run(socks(), body)


def test_socks5_bad_input_gets_the_rfc_answers() -> None:
    make = socks()

    async def body(port: int, net: LoopbackNet, heard: list[bytes]) -> None:
        # Not SOCKS5 at all: closed without a word.
        assert await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        # Truncated greeting, then truncated request: closed.
        assert await exchange(port, b"\x05\x02\x00", close=True) == b""
        assert await exchange(port, b"\x05\x01\x00\x05\x01\x00\x03\x0abeta", close=True) == (
            b"\x05\x00"
        )
        # BIND and UDP ASSOCIATE: command not supported.
        for command in (2, 3):
            answer = await exchange(
                port, b"\x05\x01\x00" + connect_request(b"beta", 80, command=command)
            )
            assert reply_code(answer) == 7
        # An address type that does not exist.
        answer = await exchange(port, b"\x05\x01\x00" + bytes([5, 1, 0, 9, 1, 2, 3, 4, 0, 80]))
        assert reply_code(answer) == 8
        # ... answered at once, before any address byte.
        answer = await exchange(port, b"\x05\x01\x00" + bytes([5, 1, 0, 9]))
        assert reply_code(answer) == 8
        # A port nobody listens on: connection refused.
        answer = await exchange(port, b"\x05\x01\x00" + connect_request(b"beta", REFUSED_PORT))
        assert reply_code(answer) == 5
        # Only methods we do not speak (GSSAPI): no acceptable method.
        assert await exchange(port, b"\x05\x01\x01") == b"\x05\xff"

    run(make, body)
    counters = make.servers[0].counters  # type: ignore[attr-defined]
    assert counters["not_socks5"] == 1
    assert counters["truncated"] == 2
    assert counters["command_unsupported"] == 2
    assert counters["address_type_unsupported"] == 2
    assert counters["refused"] == 1
    assert counters["no_acceptable_method"] == 1


def test_socks5_with_credentials_needs_the_right_login() -> None:
    def login(user: bytes, password: bytes) -> bytes:
        return bytes([1, len(user)]) + user + bytes([len(password)]) + password

    async def body(port: int, net: LoopbackNet, heard: list[bytes]) -> None:
        # No login offered: refused.
        assert await exchange(port, b"\x05\x01\x00") == b"\x05\xff"
        # A wrong password: status 1 and closed, nothing opened.
        answer = await exchange(port, b"\x05\x01\x02" + login(b"agent", b"wrong"))
        assert answer == b"\x05\x02\x01\x01"
        assert net.opened == []
        # The right one.
        request = b"\x05\x01\x02" + login(b"agent", b"s3cret") + connect_request(b"beta", 80)
        answer = await exchange(port, request + b"hi", close=True)
        assert answer[:4] == b"\x05\x02\x01\x00"
        assert reply_code(answer, after=4) == 0
        assert answer.endswith(b"hi")

    run(socks(CREDENTIALS), body)


def http(
    credentials: tuple[str, str] | None = None,
) -> Callable[[LoopbackNet], Callable[..., Awaitable[None]]]:
    def make(net: LoopbackNet) -> Callable[..., Awaitable[None]]:
        return HttpProxy(net, RESOLVE, credentials).handle

    return make


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_http_proxy_sends_a_plain_request_on_in_origin_form() -> None:
    async def body(port: int, net: LoopbackNet, heard: list[bytes]) -> None:
        request = (
            b"GET http://beta.pilot:8080/a/b?c=1 HTTP/1.1\r\nHost: beta.pilot:8080\r\n"
            b"Proxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n"
        )
        answer = await exchange(port, request, close=True)
        assert net.opened == [(str(PEER), 8080)]
        head = heard[0].decode()
        assert head.startswith("GET /a/b?c=1 HTTP/1.1\r\n")
        assert "Host: beta.pilot:8080" in head and "Connection: close" in head
        assert "Proxy-Connection" not in head
        assert answer == heard[0]  # the echo came back whole

    run(http(), body)


def test_http_proxy_connect_and_its_errors() -> None:
    async def body(port: int, net: LoopbackNet, heard: list[bytes]) -> None:
        answer = await exchange(port, b"CONNECT beta:443 HTTP/1.1\r\n\r\nraw", close=True)
        assert answer == b"HTTP/1.1 200 Connection established\r\n\r\nraw"
        assert status_of(await exchange(port, b"garbage\r\n\r\n")) == 400
        assert status_of(await exchange(port, b"GET / HTTP/1.1\r\n\r\n")) == 400
        assert status_of(await exchange(port, b"CONNECT beta HTTP/1.1\r\n\r\n")) == 400
        assert status_of(await exchange(port, b"GET https://beta/ HTTP/1.1\r\n\r\n")) == 400
        assert status_of(await exchange(port, b"GET http://beta/", close=True)) == 400
        assert status_of(await exchange(port, b"x" * 20_000 + b"\r\n\r\n")) == 400
        assert status_of(await exchange(port, b"CONNECT nobody:443 HTTP/1.1\r\n\r\n")) == 502
        refused = f"CONNECT beta:{REFUSED_PORT} HTTP/1.1\r\n\r\n".encode()
        assert status_of(await exchange(port, refused)) == 502

    run(http(), body)


def test_http_proxy_with_credentials_needs_basic_auth() -> None:
    good = base64.b64encode(b"agent:s3cret")
    bad = base64.b64encode(b"agent:nope")

    async def body(port: int, net: LoopbackNet, heard: list[bytes]) -> None:
        plain = b"CONNECT beta:80 HTTP/1.1\r\n\r\n"
        answer = await exchange(port, plain)
        assert status_of(answer) == 407 and b"Proxy-Authenticate: Basic" in answer
        for token in (bad, b"!!notbase64", b""):
            asked = b"CONNECT beta:80 HTTP/1.1\r\nProxy-Authorization: Basic " + token + b"\r\n\r\n"
            assert status_of(await exchange(port, asked)) == 407
        assert net.opened == []
        asked = b"CONNECT beta:80 HTTP/1.1\r\nProxy-Authorization: Basic " + good + b"\r\n\r\n"
        assert status_of(await exchange(port, asked + b"x", close=True)) == 200

    run(http(CREDENTIALS), body)


def test_names_resolve_to_trusted_peers_only() -> None:
    assert RESOLVE("beta") == PEER
    assert RESOLVE("BETA.pilot.") == PEER
    assert RESOLVE("fd00::2") == ip_address("fd00::2")
    assert RESOLVE("[fd00::2]") == ip_address("fd00::2")
    assert RESOLVE("gamma.pilot") is None
    assert RESOLVE("100.64.0.3") is None
