"""The stream listener of the registry and the relays: nodes whose UDP does not get through
reach the same core over TCP (net/stream.py frames after net/upgrade.py's HTTP/1.1
Upgrade, docs/RELAYS.md). Each datagram of a stream goes to the core with the stream's
source (the TCP peer's ip:port), exactly as a UDP datagram would: the gate asks the same
cookie proof before any public-key work, and the forwarder's per-source limits count
relayed bytes over TCP as over UDP. What the core sends to that source goes back down the
stream (`streams`, which the shell consults before the UDP socket).

A public surface, bounded (`StreamLimits`): connections in all and per address (an IPv4
address, an IPv6 /64), the time an opening may take (a request that trickles is cut), the
silence a stream may keep (a half-open connection goes), the frame size, and the bytes
waiting to be written to one stream (a reader that does not read is dropped, not
buffered for). Every refusal is counted in the core's counters (`stream_*`).
"""

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from pilotif.control.gate import address_group
from pilotif.net.stream import MAX_FRAME_BYTES, FrameReader, StreamError, frame
from pilotif.net.upgrade import RequestRefused, UpgradeServer
from pilotif.wg.events import Endpoint

IPV4_MAPPED_PREFIX: Final = "::ffff:"

Deliver = Callable[[bytes, Endpoint], None]
"""What takes a datagram from a source: the shell's way into the core."""


@dataclass(frozen=True)
class StreamLimits:
    """The bounds of the stream listener."""

    max_streams: int = 10_000
    """Connections open at once, in all (past it new ones are closed at once)."""
    max_per_address: int = 256
    """Connections open at once from one address (an IPv4 address, an IPv6 /64): an
    office's NAT may hold many nodes, each with a stream to the registry and each relay."""
    opening_s: float = 10.0
    """The time from accept to a whole upgrade request."""
    idle_s: float = 60.0
    """The longest a stream may send nothing (nodes send at least every 15 s)."""
    max_buffered_bytes: int = 256 * 1024
    """Bytes waiting to be written to one stream; past it the stream is dropped."""
    max_frame_bytes: int = MAX_FRAME_BYTES


def plain_host(host: str, dual_stack: bool) -> str:
    """`host` as peers know it: a dual-stack socket shows IPv4 as ::ffff:a.b.c.d."""
    if dual_stack and host.startswith(IPV4_MAPPED_PREFIX) and "." in host:
        return host.removeprefix(IPV4_MAPPED_PREFIX)
    return host


class StreamListener:
    """The open streams (by source) and their limits; `protocol` makes a connection's
    protocol for `loop.create_server`."""

    def __init__(
        self, deliver: Deliver, counters: Counter[str], limits: StreamLimits | None = None
    ) -> None:
        self.streams: dict[Endpoint, StreamConnection] = {}
        """Upgraded streams by source: where the core's answers to that source go."""
        self.counters = counters
        self.limits = limits or StreamLimits()
        self._deliver = deliver
        self._open: set[StreamConnection] = set()
        self._per_address: Counter[bytes] = Counter()

    def protocol(self) -> "StreamConnection":
        """A new connection's protocol."""
        return StreamConnection(self)

    def send(self, datagram: bytes, endpoint: Endpoint) -> bool:
        """Send `datagram` down the stream from `endpoint`; False if no stream is there."""
        stream = self.streams.get(endpoint)
        if stream is None:
            return False
        stream.send_frame(datagram)
        return True

    def close(self) -> None:
        """Close every connection."""
        for connection in list(self._open):
            connection.abort()

    def _admit(self, connection: "StreamConnection", group: bytes) -> bool:
        if len(self._open) >= self.limits.max_streams:
            self.counters["stream_too_many"] += 1
            return False
        if self._per_address[group] >= self.limits.max_per_address:
            self.counters["stream_too_many_from_address"] += 1
            return False
        self._open.add(connection)
        self._per_address[group] += 1
        return True

    def _opened(self, connection: "StreamConnection", source: Endpoint) -> None:
        self.counters["stream_opened"] += 1
        earlier = self.streams.get(source)
        if earlier is not None:
            earlier.abort()
        self.streams[source] = connection

    def _closed(self, connection: "StreamConnection", group: bytes) -> None:
        self._open.discard(connection)
        self._per_address[group] -= 1
        if self._per_address[group] <= 0:
            del self._per_address[group]
        source = connection.source
        if source is not None and self.streams.get(source) is connection:
            del self.streams[source]


class StreamConnection(asyncio.Protocol):
    """One TCP connection: the opening (bounded in time and size), then frames to the
    core and the core's answers back, until it closes, idles, or is dropped."""

    def __init__(self, listener: StreamListener) -> None:
        self._listener = listener
        self._limits = listener.limits
        self._counters = listener.counters
        self._transport: asyncio.Transport | None = None
        self._opening: UpgradeServer | None = UpgradeServer()
        self._frames = FrameReader(self._limits.max_frame_bytes)
        self._group = b""
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_heard = 0.0
        self.source: Endpoint | None = None
        """The TCP peer's ip:port, once admitted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer: tuple[Any, ...] = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        dual_stack = sock is not None and sock.family.name == "AF_INET6"
        source = (plain_host(str(peer[0]), dual_stack), int(peer[1]))
        self._group = address_group(source)
        if not self._listener._admit(self, self._group):
            self._transport.abort()
            return
        self._admitted = True
        self.source = source
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.opening_s, self._opening_overdue)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._admitted:
            self._admitted = False
            self._listener._closed(self, self._group)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            if self._opening is not None:
                data = self._open(data)
            datagrams = self._frames.feed(data) if data else []
        except RequestRefused as refused:
            self._counters[f"stream_{refused.reason}"] += 1
            self._transport.write(refused.answer)
            self._transport.close()
            return
        except StreamError as error:
            self._counters[f"stream_{error.reason}"] += 1
            self.abort()
            return
        if datagrams:
            self._last_heard = asyncio.get_running_loop().time()
        assert self.source is not None
        for datagram in datagrams:
            if self._transport.is_closing():
                return
            self._listener._deliver(datagram, self.source)

    def _open(self, data: bytes) -> bytes:
        """Read the opening; the bytes after it (frames) once it is whole."""
        assert self._opening is not None and self._transport is not None
        opened = self._opening.feed(data)
        if opened is None:
            return b""
        self._opening = None
        self._transport.write(opened.answer)
        assert self.source is not None
        self._listener._opened(self, self.source)
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self._limits.idle_s, self._check_idle)
        return opened.rest

    def send_frame(self, datagram: bytes) -> None:
        """Write one datagram as a frame; drop the stream if too much waits already."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() + len(datagram) > self._limits.max_buffered_bytes:
            self._counters["stream_slow_reader"] += 1
            self.abort()
            return
        try:
            transport.write(frame(datagram))
        except ValueError:
            self._counters["stream_frame_too_large_out"] += 1

    def abort(self) -> None:
        """Close at once, dropping what waits to be written."""
        if self._transport is not None:
            self._transport.abort()

    def _opening_overdue(self) -> None:
        self._counters["stream_opening_timeout"] += 1
        self.abort()

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        due = self._last_heard + self._limits.idle_s
        if loop.time() >= due:
            self._counters["stream_idle"] += 1
            self.abort()
            return
        self._timer = loop.call_later(due - loop.time(), self._check_idle)
