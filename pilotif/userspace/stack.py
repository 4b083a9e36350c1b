"""The userspace network stack as the daemon's local stack (`pilotif.tun.stack.LocalStack`)
and as asyncio streams for the programs inside the process.

The data path writes decrypted packets here (`write`: into the netstack) and reads what
the netstack sends (`read_batch`: its `poll`). Whenever the netstack has something to send
(the application wrote, a packet wants an ACK, a timer is due: `kick`) the data path's
read is called on the loop's next round (`wake_with`; without it, a socket pair is the fd
made readable). The netstack's events are drained after each call into it
and go to the transports (transport.py), to `open_connection`'s waiters and to the
servers' accept callbacks. ICMP echo replies to our own `ping` are taken here. UDP
(protocol 17), and the ICMP errors about our datagrams, go to the netstack's UDP
(pilotif/netstack/udp.py) before the TCP stack sees them, its datagrams out with the TCP
stack's packets; `open_udp` gives asyncio code a
UDP port (udp.py). Only portable calls: a socket pair, asyncio timers.
"""

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from pilotif.netstack import (
    Closed,
    Connected,
    Connection,
    LimitError,
    Listener,
    Readable,
    Stack,
    StackConfig,
    Writable,
)
from pilotif.netstack.udp import UdpConfig, UdpStack, is_icmp, is_udp
from pilotif.packet.icmp import ECHO_HEADER, ECHO_REPLY, echo_request_packet
from pilotif.packet.ip import IPV4_IHL_MASK, IPV4_WORD_BYTES, BytesLike, is_echo_reply
from pilotif.packet.segments import SuperPacket
from pilotif.tun.offload import VIRTIO_NET_HDR_SIZE
from pilotif.userspace.names import Resolve
from pilotif.userspace.transport import StackTransport
from pilotif.userspace.udp import UdpEndpoint

USERSPACE_CONFIG: Final = StackConfig(
    send_buffer_bytes=4 * 1024 * 1024,
    receive_buffer_bytes=4 * 1024 * 1024,
    large_segments=True,
    congestion="delivery_rate",
    max_connections=1024,
    max_connections_per_peer=128,
)
"""A userspace node's limits: 4 MiB buffers each way (a path of 100 ms at 10 MB/s holds
1 MB, and a loss holds the window's start for a round trip more), 1,024 connections, all
of them together holding at most the netstack's memory budget
(StackConfig.memory_budget_bytes, 256 MiB; connections whose data nobody reads stop at
3/4 of it: netstack/memory.py), not the 8 GiB the caps alone would allow; large
segments out (the data path cuts and seals them natively); the delivery-rate model of the
path (an overlay's underlay loses packets at random: a loss-bound window would crawl)."""
STREAM_LIMIT_BYTES: Final = 64 * 1024
"""asyncio's StreamReader limit (a line's longest) for streams made here."""
PING_IDENT: Final = 0x7075
"""The ICMP identifier of this node's own echo requests (`ping`)."""
_WAKE_BYTE: Final = b"\x01"
_DRAIN_BYTES: Final = 4096

Address = IPv4Address | IPv6Address
ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class StackServer:
    """A port of the node served with asyncio streams (`UserspaceStack.start_server`)."""

    def __init__(
        self,
        owner: "UserspaceStack",
        listener: Listener,
        handler: ConnectedCallback,
        limit: int,
    ) -> None:
        self._owner = owner
        self.listener = listener
        self.handler = handler
        self.limit = limit
        """asyncio's StreamReader limit for its connections."""

    @property
    def port(self) -> int:
        return self.listener.port

    def close(self) -> None:
        """Stop accepting (connections already accepted go on)."""
        self._owner.stop_server(self)


class UserspaceStack:
    """Implements tun.stack.LocalStack over a netstack Stack; see the module docstring."""

    merges_writes = True
    """The device hands a decrypted run of one connection's segments over as one merged
    write (its native GRO): the netstack takes it as one large segment."""

    def __init__(
        self,
        addresses: Sequence[Address],
        loop: asyncio.AbstractEventLoop,
        config: StackConfig = USERSPACE_CONFIG,
    ) -> None:
        self.stack = Stack(addresses, config)
        self.udp = UdpStack(addresses, UdpConfig(mtu=config.mtu))
        self.addresses = list(addresses)
        self.drained = True
        self._loop = loop
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._woken = False
        self._read: Callable[[], None] | None = None
        """The data path's read (`wake_with`)."""
        self._read_soon: asyncio.Handle | None = None
        self._pending: list[bytes | SuperPacket] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._transports: dict[Connection, StackTransport] = {}
        self._opening: dict[Connection, asyncio.Future[None]] = {}
        self._servers: dict[int, StackServer] = {}
        self._udp_endpoints: dict[int, UdpEndpoint] = {}
        self._pings: dict[int, asyncio.Future[float]] = {}
        self._ping_sequence = 0
        self._closed = False

    # -- LocalStack -------------------------------------------------------------------
    def fileno(self) -> int:
        return self._wake_in.fileno()

    def wake_with(self, read: Callable[[], None]) -> None:
        """Have a kick call the data path's `read` on the loop's next round rather than
        make the fd readable (no write to the socket pair, no selector wake-up for it and
        no read to clear it)."""
        self._read = read

    def read_batch(self, limit: int) -> list[memoryview] | SuperPacket:
        """Up to `limit` of the netstack's packets as they are (no copy), or one of its
        large segments (the device cuts and seals it natively)."""
        now = time.monotonic()
        if not self._pending:
            self._pending = self.stack.poll(now)
            self._pending += self.udp.take_output()
            self._dispatch()
        pending = self._pending
        if pending and isinstance(large := pending[0], SuperPacket):
            del pending[0]
            self._settle(now)
            return large
        batch: list[memoryview] = []
        for packet in pending:
            if len(batch) == limit or isinstance(packet, SuperPacket):
                break
            batch.append(memoryview(packet))
        del pending[: len(batch)]
        self._settle(now)
        return batch

    def write(self, packets: Sequence[BytesLike]) -> int:
        """What the data path decrypted (WireGuard authenticated every byte: the netstack
        does not check the checksums again, as Linux's WireGuard marks them unneeded)."""
        now = time.monotonic()
        receive = self.stack.receive
        for packet in packets:
            if is_udp(packet):
                self.udp.receive(packet, now, authenticated=True)
                continue
            if is_icmp(packet) and self.udp.receive_icmp(packet, authenticated=True):
                continue
            if is_echo_reply(packet) and self._take_echo_reply(packet, now):
                continue
            receive(packet, now, authenticated=True)
        self._dispatch()
        for readable in self.udp.take_readable():
            endpoint = self._udp_endpoints.get(readable.port)
            if endpoint is not None:
                endpoint.on_readable()
        self.kick()
        return 0

    def write_merged(self, writes: Sequence[BytesLike]) -> int:
        """Merged writes: a virtio header, then a packet or one connection's run of
        segments as one (its TCP checksum partial: see `write`)."""
        return self.write([memoryview(write)[VIRTIO_NET_HDR_SIZE:] for write in writes])

    # -- the process's side -----------------------------------------------------------
    async def open_connection(
        self, address: str | Address, port: int, *, limit: int = STREAM_LIMIT_BYTES
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to `address` (an overlay address) `port`, as asyncio streams;
        OSError (ConnectionRefusedError, TimeoutError) when it cannot be made."""
        connection = self._connect(ip_address(address), port)
        opened = self._loop.create_future()
        self._opening[connection] = opened
        try:
            await opened
        except asyncio.CancelledError:
            connection.abort()
            self.kick()
            raise
        finally:
            self._opening.pop(connection, None)
        return self._streams(connection, limit)

    async def start_server(
        self, handler: ConnectedCallback, port: int, *, limit: int = STREAM_LIMIT_BYTES
    ) -> StackServer:
        """Serve `port` of the node's addresses: `handler(reader, writer)` for each
        connection (as asyncio.start_server); ValueError when the port is served."""
        listener = self.stack.listen(port)
        server = StackServer(self, listener, handler, limit)
        self._servers[port] = server
        return server

    def open_udp(self, port: int | None = None, *, resolve: Resolve | None = None) -> UdpEndpoint:
        """A UDP port of the node's addresses (None: a free ephemeral one), for
        `send(data, (address, port))` (`resolve`: names too) and `await recv()`; OSError
        when the port is taken or the node's cap of UDP sockets is reached."""
        try:
            bound = self.udp.bind(port)
        except (ValueError, LimitError) as error:
            raise OSError(str(error)) from None
        endpoint = UdpEndpoint(bound, self._loop, self.kick, self._forget_udp, resolve)
        self._udp_endpoints[bound.port] = endpoint
        return endpoint

    def _forget_udp(self, endpoint: UdpEndpoint) -> None:
        if self._udp_endpoints.get(endpoint.port) is endpoint:
            del self._udp_endpoints[endpoint.port]

    def stop_server(self, server: StackServer) -> None:
        if self._servers.get(server.port) is server:
            del self._servers[server.port]
            server.listener.close()
            self.kick()

    async def ping(self, address: IPv4Address, timeout_s: float) -> float | None:
        """One ICMP echo to `address` over the overlay: the round trip in ms, or None."""
        self._ping_sequence = (self._ping_sequence + 1) & 0xFFFF
        sequence = self._ping_sequence
        source = next(a for a in self.addresses if isinstance(a, IPv4Address))
        answered: asyncio.Future[float] = self._loop.create_future()
        self._pings[sequence] = answered
        started = time.monotonic()
        self._pending.append(echo_request_packet(source, address, sequence, ident=PING_IDENT))
        self.kick()
        try:
            async with asyncio.timeout(timeout_s):
                return (await answered - started) * 1000
        except TimeoutError:
            return None
        finally:
            self._pings.pop(sequence, None)

    def kick(self) -> None:
        """Have the data path poll the stack soon (once, however many kicks come first)."""
        if self._woken or self._closed:
            return
        self._woken = True
        if self._read is not None:
            self._read_soon = self._loop.call_soon(self._read)
            return
        with contextlib.suppress(BlockingIOError):
            self._wake_out.send(_WAKE_BYTE)

    def close(self) -> None:
        """Stop: every connection's protocol learns it was lost (the peers' own timers
        end their side: nothing is sent any more)."""
        for transport in list(self._transports.values()):
            transport.on_closed("aborted")
        self._transports.clear()
        for endpoint in list(self._udp_endpoints.values()):
            endpoint.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._read_soon is not None:
            self._read_soon.cancel()
        self._closed = True
        self._wake_in.close()
        self._wake_out.close()

    # -- inside -------------------------------------------------------------------------
    def _connect(self, address: Address, port: int) -> Connection:
        try:
            connection = self.stack.connect(address, port, time.monotonic())
        except LimitError as error:
            raise OSError(str(error)) from None
        except StopIteration:
            raise OSError(f"this node has no IPv{address.version} address") from None
        self.kick()
        return connection

    def _streams(
        self, connection: Connection, limit: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams over `connection` for the caller (open_connection)."""
        reader = asyncio.StreamReader(limit, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
        transport = self._attach(connection, protocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    def _attach(self, connection: Connection, protocol: asyncio.Protocol) -> StackTransport:
        transport = StackTransport(connection, protocol, self._loop, self.kick)
        self._transports[connection] = transport
        return transport

    def _dispatch(self) -> None:
        """Hand the netstack's events to whom they concern."""
        for event in self.stack.take_events():
            connection = event.connection
            transport = self._transports.get(connection)
            if isinstance(event, Readable):
                if transport is not None:
                    transport.on_readable()
            elif isinstance(event, Writable):
                if transport is not None:
                    transport.on_writable()
            elif isinstance(event, Connected):
                self._on_connected(connection)
            elif isinstance(event, Closed):
                self._on_closed(event, transport)

    def _on_connected(self, connection: Connection) -> None:
        opened = self._opening.get(connection)
        if opened is not None:
            if not opened.done():
                opened.set_result(None)
            return
        server = self._servers.get(connection.listener_port or 0)
        if server is None:
            return
        while (accepted := server.listener.accept()) is not None:
            # The protocol makes the server's StreamWriter and runs the handler.
            reader = asyncio.StreamReader(server.limit, loop=self._loop)
            self._attach(accepted, asyncio.StreamReaderProtocol(reader, server.handler))

    def _on_closed(self, event: Closed, transport: StackTransport | None) -> None:
        connection = event.connection
        opened = self._opening.get(connection)
        if opened is not None and not opened.done():
            refused = event.reason == "refused"
            opened.set_exception(
                ConnectionRefusedError(f"nothing listens on port {connection.remote[1]}")
                if refused
                else TimeoutError(f"no answer from port {connection.remote[1]} ({event.reason})")
            )
        if transport is not None:
            del self._transports[connection]
            transport.on_closed(event.reason)

    def _take_echo_reply(self, packet: BytesLike, now: float) -> bool:
        """Whether `packet` answers one of our pings (then it is taken)."""
        header = (packet[0] & IPV4_IHL_MASK) * IPV4_WORD_BYTES
        if len(packet) < header + ECHO_HEADER.size:
            return False
        kind, _, _, ident, sequence = ECHO_HEADER.unpack_from(packet, header)
        waiting = self._pings.get(sequence)
        if kind != ECHO_REPLY or ident != PING_IDENT or waiting is None:
            return False
        if not waiting.done():
            waiting.set_result(now)
        return True

    def _settle(self, now: float) -> None:
        """After a read: drained or not; when drained, the kick's call cancelled or the fd
        cleared; the timer armed."""
        deadline = self.stack.next_timer()
        self.drained = (
            not self._pending and not self.udp.has_output and (deadline is None or deadline > now)
        )
        if self.drained and self._woken:
            self._woken = False
            if self._read_soon is not None:
                self._read_soon.cancel()
                self._read_soon = None
            elif self._read is None:
                with contextlib.suppress(BlockingIOError):
                    while self._wake_in.recv(_DRAIN_BYTES):
                        pass
        if deadline is None or deadline <= now:
            return
        armed = self._timer_deadline
        if armed is not None and armed <= deadline and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self.kick()
