"""Two connections joined both ways (a proxy's client and the connection it opened), as
two asyncio protocols that write what they receive straight into the other transport: no
task per direction and no StreamReader between them.

Each side's end of data is passed on as a half close (the other way still flows); when
both ended both are closed; when either fails (a reset, or data for a side that is gone)
both are aborted. Flow control is the transports' own: a side whose write buffer is over
its high-water mark pauses the other side's reading until it drains to the low one.

The connections come as asyncio streams (the proxies read their handshakes with them):
the splice takes their transports over, first passing on what the readers still hold,
and tells the streams' protocols when the connections are lost (so that their writers'
`wait_closed` works as before)."""

import asyncio
import contextlib
from typing import cast

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Side(asyncio.Protocol):
    """One connection of a splice: what it receives goes to `other`'s transport."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.transport = cast(asyncio.Transport, writer.transport)
        self.streams_protocol = writer.transport.get_protocol()
        """The streams' protocol (told when the connection is lost)."""
        self.other: _Side = self
        self.ended = False
        """Its end of data came (and was passed on)."""
        self.lost = False

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other.transport.is_closing():
            # Nobody is left to take it (the drain of a stream would raise): both go.
            self.abort_both()
            return
        other.transport.write(data)

    def eof_received(self) -> bool:
        if not self.ended:
            self.ended = True
            other = self.other
            if not other.transport.is_closing() and other.transport.can_write_eof():
                other.transport.write_eof()
            if other.ended:
                self.transport.close()
                other.transport.close()
        return True  # the other way may still flow

    def pause_writing(self) -> None:
        if not self.other.ended:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.other.ended:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            self.other.transport.abort()
        else:
            self.resume_writing()  # what the other side still sends finds this one gone
            self.eof_received()
        self.streams_protocol.connection_lost(exc)

    def abort_both(self) -> None:
        self.transport.abort()
        self.other.transport.abort()


def _held(reader: asyncio.StreamReader) -> bytes:
    """What `reader` received and nobody read yet (taken out of it). asyncio has no call
    that takes it without waiting for more."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    held = bytes(buffer)
    buffer.clear()
    return held


def _take_over(side: _Side, reader: asyncio.StreamReader) -> None:
    """Make `side` the protocol of its transport, then pass on what its reader held."""
    transport = side.transport
    transport.set_protocol(side)
    if held := _held(reader):
        side.data_received(held)
    if reader.exception() is not None:
        side.abort_both()
    elif reader.at_eof():
        side.eof_received()
    if not side.ended:
        transport.resume_reading()  # the streams' reader may have paused it
    other = side.other.transport
    if other.get_write_buffer_size() > other.get_write_buffer_limits()[1]:
        side.other.pause_writing()  # the other transport resumes its (new) protocol


async def splice(a: Streams, b: Streams) -> None:
    """Join a and b until both connections are closed; then return (cancelled: both are
    closed at once)."""
    sides = _Side(a[1]), _Side(b[1])
    sides[0].other, sides[1].other = sides[1], sides[0]
    _take_over(sides[0], a[0])
    _take_over(sides[1], b[0])
    try:
        for _, writer in (a, b):
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
    finally:
        for side in sides:
            side.transport.close()
