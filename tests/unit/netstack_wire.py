"""Two userspace stacks back to back through a simulated link, for the netstack's unit
tests: a one-way delay, seeded random loss, duplication and reordering (extra delay for
some packets), a rate (packets queue behind each other), and a `tap` that sees (and may
drop) every packet. Time is a float the wire advances from event to event; nothing
sleeps and nothing touches a socket. A stack's large segments are cut into their
segments (as the data path's `seal_tso` cuts them) before they go on the wire.
"""

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from pilotif.netstack import Connection, Stack, StackConfig, State
from pilotif.netstack.segment import parse_segment
from pilotif.packet.ip import TCP_FIN, TCP_SYN
from pilotif.packet.segments import SuperPacket, cut_segments

A_V4 = IPv4Address("100.64.0.1")
B_V4 = IPv4Address("100.64.0.2")
A_V6 = IPv6Address("fd00:64::1")
B_V6 = IPv6Address("fd00:64::2")

MAX_IP_PACKET_BYTES = 0xFFFF
"""The largest IP packet (its length field's 16 bits): no large segment is larger."""

Tap = Callable[[str, bytes], bool]
"""(direction 'ab' or 'ba', packet) -> whether the packet goes on."""


@dataclass
class Link:
    """One direction's impairments."""

    delay_s: float = 0.005
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    """Share of packets held back by `reorder_s` more."""
    reorder_s: float = 0.004
    rate_bytes_per_s: float | None = None


@dataclass
class Wire:
    """Stacks a and b (addresses A_V4/A_V6 and B_V4/B_V6) joined by `link` both ways."""

    link: Link = field(default_factory=Link)
    config_a: StackConfig = field(default_factory=StackConfig)
    config_b: StackConfig = field(default_factory=StackConfig)
    seed: int = 1
    tap: Tap | None = None
    now: float = 0.0
    mtu: int | None = None
    """The largest packet the wire carries (a larger one fails the test); None: each
    side's configured MTU."""

    def __post_init__(self) -> None:
        self.a = Stack([A_V4, A_V6], self.config_a, secret=b"a" * 32)
        self.b = Stack([B_V4, B_V6], self.config_b, secret=b"b" * 32)
        self._random = random.Random(self.seed)
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._order = itertools.count()
        self._free_at = {"ab": 0.0, "ba": 0.0}
        self.sent = {"ab": 0, "ba": 0}
        self.large: dict[str, list[SuperPacket]] = {"ab": [], "ba": []}
        """The large segments each way (before they were cut)."""
        self.last_sent: dict[str, bytes] = {}
        """The last packet each way (dropped or not)."""

    def _send(self, direction: str, packet: bytes) -> None:
        mtu = self.mtu or (self.config_a if direction == "ab" else self.config_b).mtu
        assert len(packet) <= mtu, f"a {len(packet)}-byte packet on a {mtu} MTU"
        self.sent[direction] += 1
        self.last_sent[direction] = packet
        if self.tap is not None and not self.tap(direction, packet):
            return
        link = self.link
        if self._random.random() < link.loss:
            return
        copies = 2 if self._random.random() < link.duplicate else 1
        start = self.now
        if link.rate_bytes_per_s:
            start = max(start, self._free_at[direction])
            self._free_at[direction] = start + len(packet) / link.rate_bytes_per_s
        arrive = start + link.delay_s
        if self._random.random() < link.reorder:
            arrive += link.reorder_s
        for _ in range(copies):
            heapq.heappush(self._queue, (arrive, next(self._order), direction, packet))

    def _cut(self, direction: str, large: SuperPacket) -> list[bytes]:
        """A large segment's segments (SegmentError when its headers do not say how)."""
        assert len(large.packet) <= MAX_IP_PACKET_BYTES
        self.large[direction].append(large)
        out = bytearray(2 * MAX_IP_PACKET_BYTES)
        return [
            bytes(segment)
            for segment in cut_segments(
                large.packet, large.transport_start, large.segment_payload, out, udp=False
            )
        ]

    def inject(self, direction: str, packet: bytes) -> None:
        """Deliver a packet of the test's own at once."""
        (self.b if direction == "ab" else self.a).receive(packet, self.now)

    def step(self, until_s: float | None = None) -> bool:
        """Poll both stacks, then move time to the next arrival or timer (not past
        `until_s`) and handle it; False when nothing is left to happen by then."""
        for name, stack in (("ab", self.a), ("ba", self.b)):
            for packet in stack.poll(self.now):
                if isinstance(packet, SuperPacket):
                    for segment in self._cut(name, packet):
                        self._send(name, segment)
                else:
                    self._send(name, packet)
        times = [t for t in (self.a.next_timer(), self.b.next_timer()) if t is not None]
        if self._queue:
            times.append(self._queue[0][0])
        if not times or (until_s is not None and min(times) > until_s):
            return False
        self.now = max(self.now, min(times))
        while self._queue and self._queue[0][0] <= self.now:
            _, _, direction, packet = heapq.heappop(self._queue)
            (self.b if direction == "ab" else self.a).receive(packet, self.now)
        return True

    def run(
        self,
        until: Callable[[], bool],
        limit_s: float = 600.0,
        app: Callable[[], None] | None = None,
    ) -> None:
        """Step until `until()` holds (calling `app` before each step); fails after
        `limit_s` of simulated time."""
        deadline = self.now + limit_s
        idle = 0
        while not until():
            if app is not None:
                app()
            idle = 0 if self.step() else idle + 1
            if idle > 1 and not until():
                raise AssertionError(f"nothing left to happen at {self.now:.3f}")
            if self.now > deadline:
                raise AssertionError(f"not done after {limit_s} s of simulated time")

    def settle(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass."""
        end = self.now + seconds
        while self.now < end:
            if not self.step(until_s=end):
                self.now = end


PORT = 8080


def payload(size: int, seed: int) -> bytes:
    """`size` random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def open_pair(wire: Wire, ipv6: bool = False, backlog: int = 128) -> tuple[Connection, Connection]:
    """A connects to B's listener on PORT; (client, accepted server) once both are open."""
    listener = wire.b.listen(PORT, backlog)
    client = wire.a.connect(B_V6 if ipv6 else B_V4, PORT, wire.now)
    accepted: list[Connection] = []

    def take() -> None:
        if (server := listener.accept()) is not None:
            accepted.append(server)

    wire.run(lambda: bool(accepted) and client.state is State.ESTABLISHED, app=take)
    return client, accepted[0]


def next_numbers(wire: Wire, direction: str) -> tuple[int, int]:
    """(sequence, acknowledgement number) of the next segment sent `direction`: just after
    the last one, acknowledging what that one did."""
    last = parse_segment(wire.last_sent[direction])
    end = last.seq + len(last.payload) + (1 if last.flags & (TCP_SYN | TCP_FIN) else 0)
    return end % 2**32, last.ack


def transfer(wire: Wire, sender: Connection, receiver: Connection, data: bytes) -> bytes:
    """Send `data` and close; what the receiver read until the peer's end."""
    offset = 0
    got = bytearray()

    def app() -> None:
        nonlocal offset
        if offset < len(data):
            offset += sender.send(data[offset : offset + 256 * 1024])
            if offset == len(data):
                sender.close()
        got.extend(receiver.receive())

    wire.run(lambda: receiver.peer_closed and not receiver.readable_bytes, app=app)
    return bytes(got)
