"""A node's stream to one registry or relay address (asyncio): TCP, through the HTTP proxy
when there is one (CONNECT, net/proxy.py), opened with the HTTP/1.1 Upgrade
(net/upgrade.py), then frames both ways (net/stream.py). Datagrams to send while it opens
wait (a few, MAX_WAITING); a stream that closes opens again at the next send, no sooner
than RECONNECT_S after the last try (the first failure of a run is logged, every one
counted). Drops are counted in `counters` (`stream_*`).
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Final

from pilotif.net.hostport import format_endpoint
from pilotif.net.proxy import Proxy, connect_opening, tunnel_status
from pilotif.net.stream import FrameReader, StreamError, frame
from pilotif.net.upgrade import SWITCHING_PROTOCOLS, ClientOpening, upgrade_opening
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint

CONNECT_TIMEOUT_S: Final = 10.0
"""The most a connection (through the proxy, and its opening) may take."""
RECONNECT_S: Final = 1.0
"""The least time between two tries to open the stream."""
MAX_WAITING: Final = 64
"""Datagrams kept while the stream opens; more are dropped (the sender retries)."""
MAX_BUFFERED_BYTES: Final = 1024 * 1024
"""Bytes waiting to be written to the stream; past it datagrams are dropped."""
READ_BYTES: Final = 65536


class StreamLink:
    """The stream to `target` (through `proxy`); what arrives goes to `deliver`."""

    def __init__(
        self,
        target: Endpoint,
        proxy: Proxy | None,
        deliver: Callable[[bytes], None],
        counters: Counter[str],
        clock: Callable[[], float],
    ) -> None:
        self.target = target
        self.proxy = proxy
        self._deliver = deliver
        self._counters = counters
        self._clock = clock
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: list[bytes] = []
        self._last_try: float | None = None
        self.opened = False
        """Whether the stream is open (upgraded) now."""
        self._failing = False
        """Whether the last try failed (only the first failure of a run is logged)."""

    def send(self, datagram: bytes) -> bool:
        """Send one datagram (open the stream first if needed); False if dropped."""
        writer = self._writer
        if writer is not None and self.opened:
            if writer.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
                self._counters["stream_send_full"] += 1
                return False
            writer.write(frame(datagram))
            return True
        self._open_soon()
        if len(self._waiting) >= MAX_WAITING:
            self._counters["stream_send_full"] += 1
            return False
        self._waiting.append(datagram)
        return True

    def close(self) -> None:
        """Close the stream; it opens again at the next send."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._waiting.clear()

    def _open_soon(self) -> None:
        now = self._clock()
        if self._task is not None and not self._task.done():
            return
        if self._last_try is not None and now - self._last_try < RECONNECT_S:
            return
        self._last_try = now
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        writer = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer, rest = await self._connect()
            self._writer, self.opened, self._failing = writer, True, False
            log_event("stream_opened", target=format_endpoint(self.target), via=str(self.proxy))
            waiting, self._waiting = self._waiting, []
            for datagram in waiting:
                writer.write(frame(datagram))
            frames = FrameReader()
            data = rest
            while True:
                for datagram in frames.feed(data):
                    self._deliver(datagram)
                data = await reader.read(READ_BYTES)
                if not data:
                    raise ConnectionResetError("closed by the far end")
        except (OSError, TimeoutError, StreamError) as error:
            reason = error.reason if isinstance(error, StreamError) else type(error).__name__
            self._counters[f"stream_{reason}"] += 1
            if not self._failing:
                log_event(
                    "stream_closed",
                    level=logging.WARNING,
                    target=format_endpoint(self.target),
                    via=str(self.proxy),
                    error=str(error) or reason,
                )
            self._failing = True
        finally:
            self._writer, self.opened = None, False
            if writer is not None:
                writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """A stream upgraded (through the proxy's tunnel): its reader, its writer, and
        what came after the 101 (the first frames)."""
        proxy = self.proxy
        where = (proxy.host, proxy.port) if proxy is not None else self.target
        reader, writer = await asyncio.open_connection(*where)
        try:
            rest = b""
            if proxy is not None:
                status, rest = await _exchange(reader, writer, connect_opening(proxy, self.target))
                tunnel_status(status, proxy)
            opening = upgrade_opening(format_endpoint(self.target))
            status, rest = await _exchange(reader, writer, opening, rest)
            if status != SWITCHING_PROTOCOLS:
                raise StreamError("not_upgraded", f"the server answered {status}")
        except BaseException:
            writer.close()
            raise
        return reader, writer, rest


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    opening: ClientOpening,
    already: bytes = b"",
) -> tuple[int, bytes]:
    """Send an opening request and read its answer: the status and the bytes after it."""
    writer.write(opening.request)
    answer = opening.feed(already) if already else None
    while answer is None:
        data = await reader.read(READ_BYTES)
        if not data:
            raise StreamError("closed_while_opening")
        answer = opening.feed(data)
    return answer
