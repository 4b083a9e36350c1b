"""Fixtures for the sans-IO overlay: two Devices wired back to back in memory.

Node A (100.64.0.1, fd00:64::1, underlay 198.18.0.1:51820) and node B
(100.64.0.2, fd00:64::2, underlay 198.18.0.2:51820) are each a peer of the other.
A Node keeps what its device handed out (`Device.take_output`, taken whenever a test
looks at `outgoing`, `trains`, `to_tun`, `tun_writes` or `events`) until the test clears
it. `deliver` moves the datagrams one node queued to the other, optionally through
a transform that drops, duplicates, reorders or mutates them; `exchange`
repeats that both ways until neither has anything left to send. Time is a
float the test advances; nothing sleeps and nothing touches a socket.
"""

import itertools
import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from pilotif_lab.postgres import ThrowawayPostgres, throwaway_postgres

from pilotif.wg.constants import MESSAGE_TRANSPORT
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint, Event, Output, PeerEndpoint
from pilotif.wg.messages import TRANSPORT_HEADER
from pilotif.wg.peer import Keypair, Peer

MTU = 1420
NOW = 1000.0
"""The moment every test starts at, on the fake monotonic clock."""
UDP_PROTOCOL = 17
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_IPV4_VERSION_IHL = 0x45
_IPV6_VERSION_WORD = 6 << 28
_TTL = 64
_MAX_EXCHANGE_ROUNDS = 20

Transform = Callable[[list[bytes]], Iterable[bytes]]
"""Rewrites the list of datagrams in flight: return fewer, more, reordered or changed ones."""


def _no_output() -> Output:
    return Output(datagrams=[], trains=[], packets=[], merged=[], events=[])


@dataclass
class Node:
    """One side of the test network: a Device, the addresses it owns, and what the
    device handed out so far."""

    device: Device
    endpoint: Endpoint
    v4: IPv4Address
    v6: IPv6Address
    taken: Output = field(default_factory=_no_output)

    def _take(self) -> Output:
        out = self.device.take_output()
        self.taken.datagrams.extend(out.datagrams)
        self.taken.trains.extend(out.trains)
        self.taken.packets.extend(out.packets)
        self.taken.merged.extend(out.merged)
        self.taken.events.extend(out.events)
        return self.taken

    @property
    def outgoing(self) -> list[tuple[bytes | bytearray | memoryview, PeerEndpoint]]:
        """Datagrams to send, with their endpoints (views: copy before the next send)."""
        return self._take().datagrams

    @property
    def trains(self) -> list[tuple[memoryview, int, PeerEndpoint]]:
        """GSO trains to send."""
        return self._take().trains

    @property
    def to_tun(self) -> list[bytes | bytearray | memoryview]:
        """Decrypted packets for the local stack."""
        return self._take().packets

    @property
    def tun_writes(self) -> list[bytes]:
        """Merged writes for a local stack that takes virtio headers."""
        return self._take().merged

    @property
    def events(self) -> list[Event]:
        """The device's events."""
        return self._take().events

    def packet_to(self, other: "Node", payload: bytes = b"", *, v6: bool = False) -> bytes:
        """A UDP-looking IP packet from this node's overlay address to the other's."""
        if v6:
            return ipv6_packet(self.v6, other.v6, payload)
        return ipv4_packet(self.v4, other.v4, payload)


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(
    source: IPv4Address | str, destination: IPv4Address | str, payload: bytes = b""
) -> bytes:
    """A minimal valid IPv4 packet (20-byte header, correct length and checksum)."""
    fields = [
        _IPV4_VERSION_IHL,
        0,
        _IPV4_HEADER.size + len(payload),
        0,
        0,
        _TTL,
        UDP_PROTOCOL,
        0,
        IPv4Address(source).packed,
        IPv4Address(destination).packed,
    ]
    fields[7] = _checksum(_IPV4_HEADER.pack(*fields))
    return _IPV4_HEADER.pack(*fields) + payload


def ipv6_packet(
    source: IPv6Address | str, destination: IPv6Address | str, payload: bytes = b""
) -> bytes:
    """A minimal valid IPv6 packet (40-byte header, correct payload length)."""
    header = _IPV6_HEADER.pack(
        _IPV6_VERSION_WORD,
        len(payload),
        UDP_PROTOCOL,
        _TTL,
        IPv6Address(source).packed,
        IPv6Address(destination).packed,
    )
    return header + payload


def make_node(index: int) -> Node:
    """Node number `index` (1 for A, 2 for B, ...) with a fresh random key."""
    return Node(
        device=Device(generate_private_key(), mtu=MTU),
        endpoint=(f"198.18.0.{index}", 51820),
        v4=IPv4Address(f"100.64.0.{index}"),
        v6=IPv6Address(f"fd00:64::{index}"),
    )


def connect(
    node: Node,
    other: Node,
    now: float = NOW,
    *,
    preshared_key: bytes | None = None,
    persistent_keepalive_s: int | None = None,
) -> None:
    """Make `other` a peer of `node`, owning its own /32 and /128, at its endpoint."""
    node.device.add_peer(
        other.device.public_key,
        allowed_ips=[IPv4Network(f"{other.v4}/32"), IPv6Network(f"{other.v6}/128")],
        endpoint=other.endpoint,
        preshared_key=preshared_key,
        persistent_keepalive_s=persistent_keepalive_s,
        now=now,
    )


def make_pair(
    *,
    preshared_key_a: bytes | None = None,
    preshared_key_b: bytes | None = None,
) -> tuple[Node, Node]:
    """A and B, each a peer of the other (A's PSK for B, B's PSK for A)."""
    a, b = make_node(1), make_node(2)
    connect(a, b, preshared_key=preshared_key_a)
    connect(b, a, preshared_key=preshared_key_b)
    return a, b


def take(node: Node) -> list[tuple[bytes, Endpoint]]:
    """Every datagram the node queued (copied out: sealed packets are views into the
    device's buffers), with its destination; empties the queue."""
    queued = [(bytes(datagram), endpoint) for datagram, endpoint in node.outgoing]
    node.outgoing.clear()
    return queued


def deliver(
    source: Node,
    destination: Node,
    now: float,
    transform: Transform | None = None,
    *,
    from_endpoint: Endpoint | None = None,
) -> list[bytes]:
    """Move every datagram `source` queued into `destination`; returns what arrived.

    Datagrams appear to come from `source.endpoint` unless `from_endpoint` is given.
    """
    datagrams = [bytes(datagram) for datagram, _ in take(source)]
    if transform is not None:
        datagrams = list(transform(datagrams))
    for datagram in datagrams:
        destination.device.receive((datagram,), from_endpoint or source.endpoint, now)
    return datagrams


def exchange(a: Node, b: Node, now: float) -> None:
    """Deliver both ways, unchanged, until neither node has anything queued."""
    for _ in range(_MAX_EXCHANGE_ROUNDS):
        if not a.outgoing and not b.outgoing:
            return
        deliver(a, b, now)
        deliver(b, a, now)
    raise AssertionError("the two devices never stopped talking")


def run_timers(a: Node, b: Node, until: float) -> None:
    """Fire both nodes' timers in deadline order up to `until`, exchanging after each step:
    woken by `get_timer`, as the daemon's packet pump is (early wake-ups find nothing due)."""
    while True:
        deadlines = [d for n in (a, b) if (d := n.device.get_timer()) is not None]
        if not deadlines or min(deadlines) > until:
            return
        now = min(deadlines)
        a.device.handle_timer(now)
        b.device.handle_timer(now)
        exchange(a, b, now)


def next_deadline(node: Node) -> float | None:
    """The earliest deadline of any of the node's peers' timers (what `get_timer`, which
    may name an earlier moment, stands for)."""
    deadlines = [t for p in node.device.peers() if (t := p.timers.earliest()) is not None]
    return min(deadlines, default=None)


def peer_of(node: Node, other: Node) -> Peer:
    """The state `node` keeps for `other`."""
    peer = node.device.peer(other.device.public_key)
    assert peer is not None
    return peer


def current_keypair(node: Node, other: Node) -> Keypair:
    """`node`'s current session with `other`; the test fails when there is none."""
    keypair = peer_of(node, other).current
    assert keypair is not None, "no current session"
    return keypair


@pytest.fixture
def pair() -> tuple[Node, Node]:
    """A and B configured as peers, no session yet."""
    return make_pair()


@pytest.fixture
def established(pair: tuple[Node, Node]) -> tuple[Node, Node]:
    """A and B with a session that A initiated at NOW; all outputs drained."""
    a, b = pair
    a.device.send((a.packet_to(b, b"hello"),), NOW)
    exchange(a, b, NOW)
    assert peer_of(b, a).current is not None
    for node in pair:
        node.to_tun.clear()
        node.events.clear()
    return pair


def seal(keypair: Keypair, payload: bytes) -> bytes:
    """A transport message carrying `payload` exactly as given (no padding, no checks)."""
    counter = keypair.send_counter
    keypair.send_counter += 1
    nonce = bytes(4) + counter.to_bytes(8, "little")
    return TRANSPORT_HEADER.pack(
        MESSAGE_TRANSPORT, keypair.remote_index, counter
    ) + keypair.send_aead.encrypt(nonce, payload, None)


@pytest.fixture(autouse=True)
def _pilotif_logger_restored() -> Iterator[None]:
    """The "pilotif" logger as it was before the test: a command run in process
    (`setup_logging`, netcheck's quiet level) must not hide the next test's events from
    caplog, whichever test a worker runs next."""
    logger = logging.getLogger("pilotif")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL server for the whole run (Unix socket only)."""
    with throwaway_postgres() as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_db(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a registry store lives: a SQLite file, or a fresh PostgreSQL database on
    the throwaway server (every registry store test runs on both)."""
    if request.param == "sqlite":
        return tmp_path / "registry.db"
    server: ThrowawayPostgres = request.getfixturevalue("postgres_server")
    return server.create_database(f"registry_{next(_databases)}")
