"""The asyncio shell that the registry and the standalone relays run their sans-IO core
in: a UDP socket and the stream listener (control/stream_listener.py), whose datagrams
go to the core with the wall-clock time, what the core answers sent back (down a stream
to a stream's source), its counter kept covered by a CounterLease, housekeeping actions run
every period, until SIGTERM or SIGINT."""

import asyncio
import logging
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from pilotif.control.counter_lease import CounterLease
from pilotif.control.gate import Outgoing
from pilotif.control.stream_listener import (
    IPV4_MAPPED_PREFIX,
    StreamLimits,
    StreamListener,
    plain_host,
)
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint

ANY_IPV6: Final = "::"
"""Every address of both families (one dual-stack socket: Linux's bindv6only is 0)."""
ANY_IPV4: Final = "0.0.0.0"
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


class CoreProtocol(asyncio.DatagramProtocol):
    """Hands every datagram (from the UDP socket, or from a stream of `streams`) to the
    core with the wall-clock time, sends what it returns (down the stream of its
    destination, else on the socket), and keeps the core's counter covered by its lease."""

    def __init__(self, core: DatagramCore, lease: CounterLease) -> None:
        self._core = core
        self._lease = lease
        self._transport: asyncio.DatagramTransport | None = None
        self._dual_stack = False
        self._paused = False
        self.streams: StreamListener | None = None
        """The stream listener, once serving: its sources are answered down their stream."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._dual_stack = self._transport.get_extra_info("socket").family == socket.AF_INET6

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.answer(data, (plain_host(str(addr[0]), self._dual_stack), int(addr[1])))

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
        assert self._transport is not None
        streams = self.streams
        for datagram, endpoint in outgoing:
            if streams is not None and streams.send(datagram, endpoint):
                continue
            if self._paused:
                self._core.counters["send_queue_full"] += 1
                continue
            host, port = endpoint
            if self._dual_stack and ":" not in host:
                host = IPV4_MAPPED_PREFIX + host
            self._transport.sendto(datagram, (host, port))

    def pause_writing(self) -> None:
        """The kernel's buffer is full and asyncio holds more than its high-water mark:
        drop (and count) answers rather than queue them behind junk."""
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def error_received(self, exc: Exception) -> None:
        self._core.counters["socket_error"] += 1


Housekeeping = list[tuple[str, float, Callable[[], None]]]
"""What a service does on its own: (name, every how many seconds, action)."""


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
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: CoreProtocol(core, lease), local_addr=listen
    )
    transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES
    )
    udp_port = transport.get_extra_info("sockname")[1]
    same_port = (listen[0], udp_port)
    servers = await serve_streams(protocol, core.counters, (same_port, *tcp_listens))
    stop_watching = on_open(protocol) if on_open is not None else None
    tasks = [asyncio.create_task(_every(*job)) for job in housekeeping]
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
        transport.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


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


async def _every(name: str, period_s: float, action: Callable[[], None]) -> None:
    """Run `action` now, then every `period_s`, until cancelled. A failure (the database
    is down) is logged once, and so is the first success after it: the loop goes on."""
    failing = False
    while True:
        try:
            action()
        except Exception as error:
            if not failing:
                log_event("housekeeping_failed", level=logging.ERROR, job=name, error=str(error))
            failing = True
        else:
            if failing:
                log_event("housekeeping_recovered", job=name)
            failing = False
        await asyncio.sleep(period_s)
