"""The asyncio shell that the registry and the standalone relays run their sans-IO core
in: a UDP socket whose datagrams go to the core with the wall-clock time, what the core
answers sent back, its counter kept covered by a CounterLease, housekeeping actions run
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
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint

_IPV4_MAPPED_PREFIX: Final = "::ffff:"
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
    """Hands every datagram to the core with the wall-clock time, sends what it returns,
    and keeps the core's counter covered by its lease."""

    def __init__(self, core: DatagramCore, lease: CounterLease) -> None:
        self._core = core
        self._lease = lease
        self._transport: asyncio.DatagramTransport | None = None
        self._dual_stack = False
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._dual_stack = self._transport.get_extra_info("socket").family == socket.AF_INET6

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        core = self._core
        host = str(addr[0])
        if self._dual_stack and host.startswith(_IPV4_MAPPED_PREFIX) and "." in host:
            # An IPv6 socket shows IPv4 nodes as ::ffff:a.b.c.d; their peers want a.b.c.d.
            host = host.removeprefix(_IPV4_MAPPED_PREFIX)
        try:
            outgoing = core.handle_datagram(data, (host, int(addr[1])), time.time())
            self._lease.cover(core.counter)
        except Exception as error:
            core.counters["internal_error"] += 1
            count = core.counters["internal_error"]
            if count & (count - 1) == 0:
                log_event("internal_error", error=repr(error), count=count)
            return
        assert self._transport is not None
        if self._paused:
            core.counters["send_queue_full"] += len(outgoing)
            return
        self.send(outgoing)

    def send(self, outgoing: list[tuple[bytes, Endpoint]]) -> None:
        """Send datagrams the core produced outside `datagram_received`."""
        assert self._transport is not None
        for datagram, (host, port) in outgoing:
            if self._dual_stack and ":" not in host:
                host = _IPV4_MAPPED_PREFIX + host
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
) -> None:
    """Serve `core` on a UDP socket at `listen` and run each housekeeping action every
    period, until SIGTERM or SIGINT. `on_open` may watch more (it returns how to stop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: CoreProtocol(core, lease), local_addr=listen
    )
    transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES
    )
    stop_watching = on_open(protocol) if on_open is not None else None
    tasks = [asyncio.create_task(_every(*job)) for job in housekeeping]
    try:
        await stop.wait()
    finally:
        if stop_watching is not None:
            stop_watching()
        for task in tasks:
            task.cancel()
        transport.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


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
