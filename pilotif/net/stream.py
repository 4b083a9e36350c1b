"""The stream transport's framing, sans-IO: datagrams (sealed control messages, relay
messages, WireGuard datagrams) carried over one TCP connection to the registry or a relay,
each as `length (2 bytes, big-endian) | datagram`.

`frame` writes one; `FrameReader` takes the bytes as they arrive and gives back whole
datagrams, holding at most one partial frame: a frame longer than MAX_FRAME_BYTES, or an
empty one, is a StreamError (the connection is closed, not resynchronised). The
connection's opening (the HTTP/1.1 Upgrade that makes it look like web traffic) is
net/upgrade.py's; docs/RELAYS.md says why.
"""

import struct
from typing import Final

from pilotif.net.relay_frame import WireError
from pilotif.packet.ip import BytesLike

LENGTH_SIZE: Final = 2
MAX_FRAME_BYTES: Final = 9216
"""The largest datagram a stream carries: a relayed WireGuard datagram of a 9000-byte
overlay MTU (jumbo frames) with its WireGuard and relay headers; a sealed control message
is far smaller. A larger frame closes the connection."""

_LENGTH: Final = struct.Struct(">H")

assert _LENGTH.size == LENGTH_SIZE


class StreamError(WireError):
    """Stream input we refuse (the connection is closed); `reason` names why, for counters."""


def frame(datagram: BytesLike) -> bytes:
    """`length | datagram`; ValueError for an empty datagram or one over MAX_FRAME_BYTES."""
    if not 0 < len(datagram) <= MAX_FRAME_BYTES:
        raise ValueError(f"a stream frame holds 1 to {MAX_FRAME_BYTES} bytes, not {len(datagram)}")
    return _LENGTH.pack(len(datagram)) + bytes(datagram)


class FrameReader:
    """Cuts the bytes of a stream into datagrams; holds at most one partial frame."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._pending = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._pending)

    def feed(self, data: BytesLike) -> list[bytes]:
        """The datagrams completed by `data`, in order; StreamError if a frame announces
        zero bytes or more than the maximum (nothing after it is read)."""
        pending = self._pending
        pending += data
        datagrams: list[bytes] = []
        start = 0
        while len(pending) - start >= LENGTH_SIZE:
            (length,) = _LENGTH.unpack_from(pending, start)
            if length == 0:
                raise StreamError("empty_frame")
            if length > self._max:
                raise StreamError("frame_too_large", f"{length} bytes")
            end = start + LENGTH_SIZE + length
            if end > len(pending):
                break
            datagrams.append(bytes(pending[start + LENGTH_SIZE : end]))
            start = end
        del pending[:start]
        return datagrams
