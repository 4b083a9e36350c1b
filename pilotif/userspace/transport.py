"""One netstack connection as an asyncio transport, so that asyncio's own streams
(StreamReader, StreamWriter, StreamReaderProtocol) and any asyncio protocol run over the
userspace stack unchanged.

Writes go into the connection's send buffer; what it does not take waits here (the
protocol is paused above `WRITE_HIGH_BYTES`) until the stack says Writable. Reads are
pulled from the connection when it says Readable, unless the protocol paused reading (the
window then closes: the peer is held back). `close` is a FIN after the data; a peer that
does not finish within CLOSE_LINGER_S is reset (the stack has no FIN-WAIT-2 timeout).
"""

import asyncio
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any, Final

from pilotif.netstack import Connection, LocalProtocolError

READ_CHUNK_BYTES: Final = 256 * 1024
"""The most handed to the protocol in one data_received."""
WRITE_HIGH_BYTES: Final = 256 * 1024
"""Bytes waiting here (beyond the connection's send buffer) that pause the writer."""
WRITE_LOW_BYTES: Final = 64 * 1024
"""...and that resume it."""
CLOSE_LINGER_S: Final = 30.0
"""How long a closed connection waits for the peer's FIN before it is reset."""
_ERRORS: Final[dict[str, Callable[[], Exception]]] = {
    "reset": lambda: ConnectionResetError("connection reset by the peer"),
    "refused": lambda: ConnectionRefusedError("connection refused"),
    "timeout": lambda: TimeoutError("the peer stopped answering"),
}
"""Why a connection ended (netstack's Closed.reason) -> the error the protocol gets."""


def endpoint_of(pair: tuple[bytes, int]) -> tuple[str, int]:
    """A connection's (packed address, port) as a socket address."""
    return str(ip_address(pair[0])), pair[1]


class StackTransport(asyncio.Transport):
    """An asyncio transport over one netstack Connection; `kick` asks for a poll of the
    stack (the application's calls only mark the connection)."""

    def __init__(
        self,
        connection: Connection,
        protocol: asyncio.BaseProtocol,
        loop: asyncio.AbstractEventLoop,
        kick: Callable[[], None],
    ) -> None:
        super().__init__({"peername": endpoint_of(connection.remote)})
        self.connection = connection
        self._protocol = protocol
        self._loop = loop
        self._kick = kick
        self._waiting = bytearray()
        """What the connection's send buffer did not take yet."""
        self._eof_wanted = False
        self._eof_told = False
        self._closing = False
        self._lost = False
        self._reading = True
        self._writing_paused = False
        self._high = WRITE_HIGH_BYTES
        self._low = WRITE_LOW_BYTES
        self._linger: asyncio.TimerHandle | None = None
        protocol.connection_made(self)
        self.on_readable()

    # -- asyncio.Transport ----------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return endpoint_of(self.connection.local)
        return super().get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        self._reading = False
        self.write_eof()
        self._linger = self._loop.call_later(CLOSE_LINGER_S, self.abort)

    def abort(self) -> None:
        self._closing = True
        self._waiting.clear()
        self.connection.abort()
        self._kick()

    def is_reading(self) -> bool:
        return self._reading and not self._lost

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._closing or self._reading:
            return
        self._reading = True
        self.on_readable()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_wanted or self._lost or not data:
            return
        if self._waiting:
            self._waiting += data
        else:
            taken = self._send(data)
            if taken < len(data):
                self._waiting += memoryview(data)[taken:]
        self._kick()
        if not self._writing_paused and len(self._waiting) > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._eof_wanted:
            return
        self._eof_wanted = True
        if not self._waiting:
            self.connection.close()
            self._kick()

    def get_write_buffer_size(self) -> int:
        return len(self._waiting)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = WRITE_HIGH_BYTES if high is None else high
        self._low = min(self._high, WRITE_LOW_BYTES if low is None else low)

    # -- what the stack tells ---------------------------------------------------------
    def on_readable(self) -> None:
        """Hand what arrived to the protocol (unless paused), then the end of data."""
        connection = self.connection
        while connection.readable_bytes and not self._lost and (self._reading or self._closing):
            data = connection.receive(READ_CHUNK_BYTES)
            if not self._closing:  # closed by us: what still comes is thrown away
                self._protocol.data_received(data)  # type: ignore[attr-defined]
        self._kick()
        if connection.peer_closed and not connection.readable_bytes and not self._eof_told:
            self._eof_told = True
            if self._closing:
                return
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            if not keep_open:
                self.close()

    def on_writable(self) -> None:
        """Move what waits here into the connection's send buffer."""
        if self._waiting and not self._lost:
            taken = self._send(self._waiting)
            del self._waiting[:taken]
        if not self._waiting and self._eof_wanted:
            self.connection.close()
        self._kick()
        if self._writing_paused and len(self._waiting) <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def on_closed(self, reason: str) -> None:
        """The connection is gone: tell the protocol (once)."""
        if self._lost:
            return
        self._lost = True
        self._waiting.clear()
        if self._linger is not None:
            self._linger.cancel()
        make_error = _ERRORS.get(reason)
        error = None if make_error is None or self._closing else make_error()
        self._loop.call_soon(self._tell_lost, error)

    def _tell_lost(self, error: Exception | None) -> None:
        # The protocol of that moment (a splice may have taken the transport over since).
        self._protocol.connection_lost(error)

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.connection.send(data)
        except LocalProtocolError:
            # The connection can take no more (the peer reset it): the data is lost, as
            # on a socket; the Closed event tells the protocol.
            return len(data)
