"""When a node's control datagrams and relayed peers go over the stream: the decision
alone (sans-IO, `now` passed in), and the Bind that follows it against a stream
listener on loopback (UDP unanswered -> the stream; UDP answers -> back)."""

import asyncio
import socket
from collections import Counter
from pathlib import Path

import pytest

from pilotif.control.gate import Outgoing
from pilotif.control.shell import CoreProtocol
from pilotif.control.wire import KEY_REQUEST
from pilotif.net import fallback
from pilotif.net.bind import UdpBind, path_transport
from pilotif.net.fallback import (
    FALLBACK_AFTER_S,
    UDP_PROBE_EVERY_S,
    TransportChanged,
    TransportChoice,
    TransportMode,
)
from pilotif.net.proxy import Proxy
from pilotif.net.streams import StreamOptions
from pilotif.wg.events import Endpoint, RelayEndpoint
from tests.unit.test_stream_listener import serving

WAIT_S = 20.0
T0 = 1000.0


# The decision.


def test_auto_moves_to_the_stream_only_after_udp_stays_unanswered() -> None:
    choice = TransportChoice(TransportMode.AUTO)
    assert choice.use_stream(T0) is None
    choice.sent_udp(T0)
    choice.sent_udp(T0 + 1)
    assert choice.use_stream(T0 + FALLBACK_AFTER_S - 0.1) is None
    assert choice.use_stream(T0 + FALLBACK_AFTER_S) == TransportChanged(True, "udp_unanswered")
    assert choice.on_stream
    assert choice.use_stream(T0 + 100) is None  # already there


def test_an_answer_over_udp_keeps_auto_on_udp() -> None:
    choice = TransportChoice(TransportMode.AUTO)
    for second in range(30):
        choice.sent_udp(T0 + second)
        choice.heard_udp(T0 + second + 0.1)
        assert choice.use_stream(T0 + second + 0.5) is None
    assert not choice.on_stream


def test_on_the_stream_auto_probes_udp_now_and_again_and_moves_back() -> None:
    choice = TransportChoice(TransportMode.AUTO)
    choice.sent_udp(T0)
    assert choice.use_stream(T0 + FALLBACK_AFTER_S) is not None
    switched = T0 + FALLBACK_AFTER_S
    assert not choice.probe_due(switched + 1)
    assert choice.probe_due(switched + UDP_PROBE_EVERY_S)
    assert not choice.probe_due(switched + UDP_PROBE_EVERY_S + 1)
    assert choice.heard_udp(switched + 11) == TransportChanged(False, "udp_answered")
    assert not choice.on_stream and not choice.probe_due(switched + 100)


def test_tcp_is_on_the_stream_from_the_start_and_stays() -> None:
    choice = TransportChoice(TransportMode.TCP)
    assert choice.on_stream
    assert choice.heard_udp(T0) is None
    assert choice.on_stream and not choice.probe_due(T0 + 100)


def test_udp_never_streams() -> None:
    choice = TransportChoice(TransportMode.UDP)
    choice.sent_udp(T0)
    assert choice.use_stream(T0 + 1000) is None
    assert not choice.on_stream


# The Bind on loopback.


class Registry:
    """A stand-in for the registry: each datagram is echoed, and a key request answered
    with b'key'; over UDP nothing is heard while `udp_blocked`."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.heard: list[tuple[bytes, Endpoint]] = []
        self.protocol: CoreProtocol | None = None
        self.udp_blocked = False

    @property
    def counter(self) -> int:
        return 0

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        assert self.protocol is not None and self.protocol.streams is not None
        if self.udp_blocked and source not in self.protocol.streams.streams:
            return []
        self.heard.append((data, source))
        return [(b"\x52key" if data == KEY_REQUEST else data, source)]

    def waited(self, delay_s: float, now: float) -> None:
        pass

    def drained(self, now: float) -> None:
        pass

    def urgent(self, data: bytes) -> bool:
        return False


class Node:
    """A Bind with streams, read the way the data path reads it."""

    def __init__(self, registry: Endpoint, mode: TransportMode) -> None:
        self.bind = UdpBind(None, (registry,), StreamOptions(mode, None, KEY_REQUEST))
        self.registry = registry
        self.received: asyncio.Queue[tuple[bytes, Endpoint]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for sock in self.bind.sockets():
            loop.add_reader(sock.fileno(), self._readable, sock)

    def _readable(self, sock: socket.socket) -> None:
        while (got := self.bind.receive(sock)) is not None:
            buffer, size, source = got
            for data in self.bind.split_registry(buffer, size, source).control:
                self.received.put_nowait((data, source))

    async def ask(self, data: bytes) -> bytes:
        """Send `data` to the registry until an answer comes (as the link retries)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                assert self.bind.send_control([(data, self.registry)]) == 0
                try:
                    answer, source = await asyncio.wait_for(self.received.get(), 0.5)
                except TimeoutError:
                    continue
                assert source == self.registry
                return answer

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.bind.sockets():
            loop.remove_reader(sock.fileno())
        self.bind.close()


def test_tcp_mode_talks_to_the_registry_over_the_stream(tmp_path: Path) -> None:
    core = Registry()

    async def test() -> None:
        async with serving(core, tmp_path) as (at, protocol):
            core.protocol = protocol
            node = Node(at, TransportMode.TCP)
            assert await node.ask(b"\x50hello") == b"\x50hello"
            assert protocol.streams is not None and len(protocol.streams.streams) == 1
            assert node.bind.transport()["carrier"] == "tcp"
            assert node.bind.relay_text() == "tcp relay"
            node.close()

    asyncio.run(test())
    [(_, source)] = core.heard
    assert source[1] != 0


def test_auto_falls_back_to_the_stream_when_udp_gets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fallback, "FALLBACK_AFTER_S", 0.5)
    core = Registry()
    core.udp_blocked = True

    async def test() -> None:
        async with serving(core, tmp_path) as (at, protocol):
            core.protocol = protocol
            node = Node(at, TransportMode.AUTO)
            assert node.bind.transport()["carrier"] == "udp"
            assert await node.ask(b"\x50hello") == b"\x50hello"
            assert node.bind.transport()["carrier"] == "tcp"
            node.close()

    asyncio.run(test())


def test_relayed_peers_follow_the_control_datagrams_onto_the_stream(tmp_path: Path) -> None:
    core = Registry()

    async def test() -> None:
        async with serving(core, tmp_path) as (at, protocol):
            core.protocol = protocol
            node = Node(at, TransportMode.TCP)
            peer = RelayEndpoint(bytes(range(32)))
            assert node.bind.send([(b"\x04" + bytes(40), peer)]) == 0
            async with asyncio.timeout(WAIT_S):
                while not core.heard:
                    await asyncio.sleep(0.01)
            node.close()

    asyncio.run(test())
    [(data, _)] = core.heard
    assert data[0] == 0x51 and data[4:36] == bytes(range(32))


def test_auto_moves_back_to_udp_when_udp_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fallback, "FALLBACK_AFTER_S", 0.5)
    monkeypatch.setattr(fallback, "UDP_PROBE_EVERY_S", 0.2)
    core = Registry()
    core.udp_blocked = True

    async def test() -> None:
        async with serving(core, tmp_path) as (at, protocol):
            core.protocol = protocol
            node = Node(at, TransportMode.AUTO)
            assert await node.ask(b"\x50one") == b"\x50one"
            assert node.bind.transport()["carrier"] == "tcp"
            core.udp_blocked = False
            async with asyncio.timeout(WAIT_S):
                while node.bind.transport()["carrier"] != "udp":
                    await node.ask(b"\x50again")
                    await asyncio.sleep(0.05)
            node.close()

    asyncio.run(test())
    assert any(data == KEY_REQUEST for data, _ in core.heard)


def test_a_path_says_its_transport() -> None:
    async def test() -> None:
        relayed = RelayEndpoint(bytes(32))
        plain = UdpBind(None, (("127.0.0.1", 9),))
        tcp = UdpBind(None, (("127.0.0.1", 9),), StreamOptions(TransportMode.TCP, None, b"p"))
        proxy = Proxy("10.0.0.8", 3128)
        proxied = UdpBind(None, (), StreamOptions(TransportMode.TCP, proxy, b"p"))
        try:
            assert path_transport(plain, ("198.18.0.2", 1)) == "udp4"
            assert path_transport(plain, ("2001:db8::2", 1)) == "udp6"
            assert path_transport(plain, relayed) == "relay"
            assert path_transport(tcp, ("198.18.0.2", 1)) == "udp4"
            assert path_transport(tcp, relayed) == "tcp relay"
            assert path_transport(proxied, relayed) == "tcp relay via proxy"
            assert proxied.transport()["carrier"] == "tcp via proxy"
            assert proxied.transport()["proxy"] == "http://10.0.0.8:3128"
        finally:
            for bind in (plain, tcp, proxied):
                bind.close()

    asyncio.run(test())
