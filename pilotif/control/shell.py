"""The asyncio shell that the registry and the standalone relays run their sans-IO core
in: a UDP socket and the stream listener (control/stream_listener.py), whose datagrams
go to the core with the wall-clock time, what the core answers sent back (down a stream
to a stream's source), its counter kept covered by a CounterLease, housekeeping actions run
every period, until SIGTERM or SIGINT."""

import asyncio
import contextlib
import logging
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from pilotif.control.counter_lease import CounterLease
from pilotif.control.gate import Outgoing
from pilotif.control.stream_listener import (
    IPV4_MAPPED_PREFIX,
    StreamLimits,
    StreamListener,
    plain_host,
)
from pilotif.util.delays import DelayHistogram
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint

ANY_IPV6: Final = "::"
"""Every address of both families (one dual-stack socket: Linux's bindv6only is 0)."""
ANY_IPV4: Final = "0.0.0.0"
READ_BATCH: Final = 256
"""Datagrams read per wake-up before the loop's other work (streams, housekeeping) has
its turn: about a millisecond of reads."""
DRAIN_S: Final = 0.002
"""How long the backlog is served between two reads of the socket (its datagrams may
cost an X25519 and a query each): with READ_BATCH, what a heartbeat waits for behind a
crowd, a few milliseconds per READ_BATCH datagrams ahead of it in the kernel's queue."""
MAX_BACKLOG: Final = 8192
"""Datagrams read and waiting to be served (about as many as the socket's buffer
holds)."""
MAX_DATAGRAM_BYTES: Final = 65_535
SO_TIMESTAMPNS: Final = 35
SCM_TIMESTAMPNS: Final = SO_TIMESTAMPNS
"""Linux's receive timestamps, which Python's socket module does not name: each datagram
carries the time (a timespec) the kernel queued it."""
_TIMESPEC: Final = struct.Struct("@qq")
ANCILLARY_BYTES: Final = socket.CMSG_SPACE(_TIMESPEC.size)
RECEIVE_BUFFER_BYTES: Final = 4 * 1024 * 1024
"""The socket's receive buffer (as far as net.core.rmem_max allows): a burst of
datagrams waits there while a batch of heartbeats is written."""


class DatagramCore(Protocol):
    """A sans-IO core that answers datagrams: the registry's, or a relay's."""

    counters: Counter[str]

    @property
    def counter(self) -> int:
        """The counter of the latest message sealed."""

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        """What to send in answer to one datagram."""

    def waited(self, delay_s: float, now: float) -> None:
        """A datagram of the backlog about to be handled waited `delay_s` since it
        arrived."""

    def drained(self, now: float) -> None:
        """The backlog emptied at `now`."""

    def urgent(self, data: bytes) -> bool:
        """Whether a datagram is served before the backlog: cheap work (a node's
        heartbeat on its channel, relayed traffic, a key request)."""


class CoreProtocol:
    """Hands every datagram (from the UDP socket, or from a stream of `streams`) to the
    core with the wall-clock time, sends what it returns (down the stream of its
    destination, else on the socket), and keeps the core's counter covered by its lease.

    The socket is read in batches (at most READ_BATCH at a time, then the loop's other
    work has its turn). What the core calls urgent is answered at once; the rest joins a
    backlog (at most MAX_BACKLOG datagrams; past it dropped and counted as
    `backlog_full`) served DRAIN_S at a time between reads, so that a heartbeat never
    waits behind a crowd of new nodes. The core hears how long each backlog datagram
    waited since it arrived (`waited`, from the kernel's receive timestamp where there is
    one), which is how it knows it falls behind."""

    def __init__(self, core: DatagramCore, lease: CounterLease) -> None:
        self._core = core
        self._lease = lease
        self._sock: socket.socket | None = None
        self._dual_stack = False
        self._backlog: deque[tuple[bytes, Endpoint, float | None]] = deque()
        """Datagrams read and not yet served: data, source, when they arrived."""
        self._draining = False
        self.streams: StreamListener | None = None
        """The stream listener, once serving: its sources are answered down their stream."""
        self.urgent_waits = DelayHistogram()
        """How long each datagram answered as read waited in the socket's queue (a
        heartbeat's share of its round trip; logged as `urgent_waits` at the end)."""

    def attach(self, sock: socket.socket) -> None:
        """Serve the (non-blocking, bound) UDP socket `sock`."""
        self._sock = sock
        self._dual_stack = sock.family == socket.AF_INET6

    def read_ready(self) -> None:
        """Read what waits on the socket (called when it is readable): answer what is
        urgent, keep the rest for `_drain`."""
        assert self._sock is not None
        for _ in range(READ_BATCH):
            try:
                data, ancillary, _, addr = self._sock.recvmsg(MAX_DATAGRAM_BYTES, ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # An ICMP error queued on the socket by an earlier send.
                self._core.counters["socket_error"] += 1
                continue
            source = (plain_host(str(addr[0]), self._dual_stack), int(addr[1]))
            if self._core.urgent(data):
                arrived = kernel_arrival(ancillary)
                if arrived is not None:
                    self.urgent_waits.add(time.time() - arrived)
                self.answer(data, source)
            elif len(self._backlog) < MAX_BACKLOG:
                self._backlog.append((data, source, kernel_arrival(ancillary)))
            else:
                self._core.counters["backlog_full"] += 1
        if self._backlog and not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Serve the oldest of the backlog for DRAIN_S, then let the loop read again."""
        until = time.monotonic() + DRAIN_S
        while self._backlog:
            data, source, arrived = self._backlog.popleft()
            if arrived is not None:
                now = time.time()
                self._core.waited(now - arrived, now)
            self.answer(data, source)
            if time.monotonic() >= until:
                break
        if self._backlog:
            asyncio.get_running_loop().call_soon(self._drain)
        else:
            self._core.drained(time.time())
            self._draining = False

    def answer(self, data: bytes, source: Endpoint) -> None:
        """Hand one datagram from `source` to the core and send what it answers."""
        core = self._core
        try:
            outgoing = core.handle_datagram(data, source, time.time())
            self._lease.cover(core.counter)
        except Exception as error:
            core.counters["internal_error"] += 1
            count = core.counters["internal_error"]
            if count & (count - 1) == 0:
                log_event("internal_error", error=repr(error), count=count)
            return
        self.send(outgoing)

    def send(self, outgoing: list[tuple[bytes, Endpoint]]) -> None:
        """Send datagrams: down the stream of their destination, else on the socket
        (dropped and counted while the socket's buffer is full)."""
        assert self._sock is not None
        streams = self.streams
        for datagram, endpoint in outgoing:
            if streams is not None and streams.send(datagram, endpoint):
                continue
            host, port = endpoint
            if self._dual_stack and ":" not in host:
                host = IPV4_MAPPED_PREFIX + host
            try:
                self._sock.sendto(datagram, (host, port))
            except (BlockingIOError, InterruptedError):
                self._core.counters["send_queue_full"] += 1
            except OSError:
                self._core.counters["socket_error"] += 1


Housekeeping = list[tuple[str, float, Callable[[], list[Outgoing] | None]]]
"""What a service does on its own: (name, every how many seconds, action); what an
action returns is sent."""


async def serve_until_stopped(
    core: DatagramCore,
    lease: CounterLease,
    listen: Endpoint,
    housekeeping: Housekeeping,
    on_open: Callable[[CoreProtocol], Callable[[], None]] | None = None,
    tcp_listens: tuple[Endpoint, ...] = (),
) -> None:
    """Serve `core` on a UDP socket at `listen`, on streams at the same address and port
    (TCP) and at each of `tcp_listens`, and run each housekeeping action every period,
    until SIGTERM or SIGINT. `on_open` may watch more (it returns how to stop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listen = listen_address(listen)
    try:
        with serving_udp(core, lease, listen) as (protocol, bound):
            same_port = (listen[0], bound[1])
            servers = await serve_streams(protocol, core.counters, (same_port, *tcp_listens))
            stop_watching = on_open(protocol) if on_open is not None else None
            tasks = [asyncio.create_task(_every(*job, protocol.send)) for job in housekeeping]
            try:
                await stop.wait()
            finally:
                if stop_watching is not None:
                    stop_watching()
                for task in tasks:
                    task.cancel()
                for server in servers:
                    server.close()
                if protocol.streams is not None:
                    protocol.streams.close()
                waits = protocol.urgent_waits
                log_event(
                    "urgent_waits",
                    count=waits.count,
                    p50_ms=waits.quantile_ms(0.5),
                    p99_ms=waits.quantile_ms(0.99),
                    max_ms=round(waits.max_s * 1000, 3),
                )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def serving_udp(
    core: DatagramCore, lease: CounterLease, listen: Endpoint
) -> Iterator[tuple[CoreProtocol, Endpoint]]:
    """`core` answering on a UDP socket bound to `listen`, read by the running loop until
    the block ends; its protocol, and the address the socket is bound to."""
    loop = asyncio.get_running_loop()
    protocol = CoreProtocol(core, lease)
    sock = udp_socket(listen)
    protocol.attach(sock)
    loop.add_reader(sock.fileno(), protocol.read_ready)
    try:
        yield protocol, (listen[0], sock.getsockname()[1])
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


def kernel_arrival(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """When the kernel queued a datagram (its receive timestamp), if it says."""
    for level, kind, value in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, SCM_TIMESTAMPNS) and len(value) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            return float(seconds + nanoseconds / 1e9)
    return None


def udp_socket(listen: Endpoint) -> socket.socket:
    """A non-blocking UDP socket bound to `listen` (an IPv6 address or `::`: one socket
    for both families), with RECEIVE_BUFFER_BYTES to read from and, on Linux, the time
    each datagram was queued."""
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        if sys.platform == "linux":
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_address(listen: Endpoint) -> Endpoint:
    """Where to listen for `listen`: itself, but `::` (both families) on a host whose
    kernel has no IPv6 is 0.0.0.0 on the same port (every address it has; said once)."""
    if listen[0] != ANY_IPV6:
        return listen
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError as error:
        log_event("listening_ipv4_only", level=logging.WARNING, reason=str(error))
        return (ANY_IPV4, listen[1])
    return listen


async def serve_streams(
    protocol: CoreProtocol,
    counters: Counter[str],
    listens: tuple[Endpoint, ...],
    limits: StreamLimits | None = None,
) -> list[asyncio.Server]:
    """Listen for streams at each of `listens` (none: no listener), their datagrams
    answered by `protocol` as its own."""
    if not listens:
        return []
    listener = StreamListener(protocol.answer, counters, limits)
    protocol.streams = listener
    loop = asyncio.get_running_loop()
    return [
        # `::` means every address of both families, as for the UDP socket (asyncio would
        # take IPv6 only).
        await loop.create_server(
            listener.protocol, None if host == ANY_IPV6 else host, port, reuse_address=True
        )
        for host, port in listens
    ]


async def _every(
    name: str,
    period_s: float,
    action: Callable[[], list[Outgoing] | None],
    send: Callable[[list[Outgoing]], None],
) -> None:
    """Run `action` now, then every `period_s`, until cancelled, and `send` what it
    returns. A failure (the database is down) is logged once, and so is the first
    success after it: the loop goes on."""
    failing = False
    while True:
        try:
            outgoing = action()
            if outgoing:
                send(outgoing)
        except Exception as error:
            if not failing:
                log_event("housekeeping_failed", level=logging.ERROR, job=name, error=str(error))
            failing = True
        else:
            if failing:
                log_event("housekeeping_recovered", job=name)
            failing = False
        await asyncio.sleep(period_s)
