"""UDP in batches: many datagrams per system call with UDP GSO (send) and GRO (receive).

A GSO send (`sendmsg` with a UDP_SEGMENT control message) hands the kernel up to 64
datagrams of one size (the last may be shorter) for one endpoint as a single buffer;
the kernel cuts it. With UDP_GRO set on a socket the kernel may instead hand us several
datagrams of one sender glued together, and says their size in a control message
(`pilotif.wg.messages.split_coalesced` cuts them). WireGuard pads plaintexts to 16
bytes, so the encrypted segments of one TCP super-packet are equal in size but the
last, as GSO needs.

Each offload is probed when the socket is wrapped and dropped for good at the first
EIO or EINVAL (a device or kernel that cannot segment); `status()` says which are on.
"""

import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any, Final

from pilotif.net.udp import UdpSockets
from pilotif.wg.crypto import BytesLike
from pilotif.wg.events import Endpoint

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
UDP_MAX_SEGMENTS: Final = 64
"""Datagrams one GSO send may carry (the kernel's UDP_MAX_SEGMENTS)."""
MAX_GSO_BYTES: Final = 65535 - 20 - 8
"""Bytes one GSO send may carry: the largest IPv4 UDP payload."""
RECEIVE_BUFFER_BYTES: Final = 65535
"""The most bytes one receive returns (the datagrams of one GRO batch together)."""
_GSO_SIZE: Final = struct.Struct("=H")
_GRO_SIZE_INT: Final = struct.Struct("=i")
_ANCILLARY_BYTES: Final = socket.CMSG_SPACE(_GRO_SIZE_INT.size)
_DISABLING_ERRNOS: Final = frozenset({errno.EIO, errno.EINVAL})


def segments_per_send(datagram_bytes: int) -> int:
    """How many datagrams of `datagram_bytes` one GSO send may carry."""
    return max(1, min(UDP_MAX_SEGMENTS, MAX_GSO_BYTES // max(datagram_bytes, 1)))


def gso_groups(
    datagrams: Sequence[tuple[BytesLike, Endpoint]],
) -> list[tuple[Endpoint, int, list[BytesLike]]]:
    """Cut `datagrams` (in order) into GSO sends: (endpoint, segment size, datagrams).

    A group holds consecutive datagrams to one endpoint, all of the first one's size but
    the last, which may be shorter; at most UDP_MAX_SEGMENTS and MAX_GSO_BYTES.
    """
    groups: list[tuple[Endpoint, int, list[BytesLike]]] = []
    current: list[BytesLike] = []
    endpoint: Endpoint | None = None
    size = room = 0
    for datagram, destination in datagrams:
        length = len(datagram)
        if room and length <= size and (destination is endpoint or destination == endpoint):
            current.append(datagram)
            # A shorter datagram ends the group: GSO cuts every segment but the last
            # to the group's size.
            room = room - 1 if length == size else 0
            continue
        current = [datagram]
        endpoint, size = destination, length
        room = segments_per_send(length) - 1
        groups.append((destination, length, current))
    return groups


class _BatchSocket:
    """One UDP socket with its probed offloads and its receive buffer."""

    def __init__(self, sock: socket.socket, *, gro: bool) -> None:
        self.sock = sock
        self.gso = _probe(sock, UDP_SEGMENT, None)
        self.gro = gro and _probe(sock, UDP_GRO, 1)
        self.disabled: str | None = None
        self.buffer = bytearray(RECEIVE_BUFFER_BYTES)
        self.view = memoryview(self.buffer)

    def status(self) -> dict[str, Any]:
        return {"gso": self.gso, "gro": self.gro, "gso_disabled": self.disabled}

    def send(self, endpoint: Endpoint, size: int, parts: list[BytesLike], count: int) -> int:
        """Send one GSO group of `count` datagrams of `size` bytes (the last may be
        shorter), laid out in `parts`; the number of datagrams the kernel refused."""
        sock = self.sock
        if self.gso and count > 1:
            try:
                sock.sendmsg(parts, [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))], 0, endpoint)
            except OSError as error:
                if error.errno not in _DISABLING_ERRNOS:
                    return count
                self.gso = False
                self.disabled = f"{errno.errorcode.get(error.errno or 0, '?')} on a GSO send"
            else:
                return 0
        failed = 0
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(view), size):
                try:
                    sock.sendto(view[start : start + size], endpoint)
                except OSError:
                    failed += 1
        return failed

    def receive(self) -> tuple[memoryview, int, Endpoint] | None:
        try:
            length, ancillary, _, address = self.sock.recvmsg_into(
                [self.buffer], _ANCILLARY_BYTES, socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return None
        segment_size = 0
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO:
                if len(data) >= _GRO_SIZE_INT.size:
                    segment_size = _GRO_SIZE_INT.unpack_from(data)[0]
                else:
                    segment_size = _GSO_SIZE.unpack_from(data)[0]
        return self.view[:length], segment_size, (address[0], address[1])


def _probe(sock: socket.socket, option: int, value: int | None) -> bool:
    """Whether the kernel knows a UDP socket option: set it, or just read it."""
    try:
        if value is None:
            sock.getsockopt(SOL_UDP, option)
        else:
            sock.setsockopt(SOL_UDP, option, value)
    except OSError:
        return False
    return True


class UdpBatch:
    """Batch sends and receives on the sockets of a `UdpSockets`.

    With `gro=True` the sockets may return glued datagrams, so every receive on them
    must go through `receive` here (never `UdpSockets.receive`). Received views point
    into a per-socket buffer that the next `receive` on that socket reuses.
    """

    def __init__(self, sockets: UdpSockets, *, gro: bool = True) -> None:
        self._v4 = _BatchSocket(sockets.v4, gro=gro)
        self._v6 = _BatchSocket(sockets.v6, gro=gro) if sockets.v6 is not None else None
        self._by_fd = {b.sock.fileno(): b for b in (self._v4, self._v6) if b is not None}

    def status(self) -> dict[str, Any]:
        """Which offloads each socket has, and why GSO was dropped if it was."""
        return {
            "v4": self._v4.status(),
            "v6": self._v6.status() if self._v6 is not None else None,
        }

    def send(self, datagrams: Sequence[tuple[BytesLike, Endpoint]]) -> int:
        """Send `datagrams` in order, in as few calls as GSO allows; the number refused."""
        failed = 0
        for endpoint, size, group in gso_groups(datagrams):
            batch = self._v6 if ":" in endpoint[0] else self._v4
            if batch is None:
                failed += len(group)
                continue
            failed += batch.send(endpoint, size, group, len(group))
        return failed

    def send_buffer(self, buffer: BytesLike, segment_size: int, endpoint: Endpoint) -> int:
        """Send a buffer of back-to-back datagrams of `segment_size` bytes (the last may
        be shorter) to one endpoint; the number of datagrams the kernel refused."""
        batch = self._v6 if ":" in endpoint[0] else self._v4
        view = memoryview(buffer)
        count = -(-len(view) // segment_size)
        if batch is None:
            return count
        per_send = segments_per_send(segment_size) * segment_size
        failed = 0
        for start in range(0, len(view), per_send):
            chunk = view[start : start + per_send]
            failed += batch.send(endpoint, segment_size, [chunk], -(-len(chunk) // segment_size))
        return failed

    def receive(self, sock: socket.socket) -> tuple[memoryview, int, Endpoint] | None:
        """One receive on `sock`, or None when none waits: the buffer, the size of the
        datagrams glued in it (0: one datagram; `split_coalesced` cuts them) and their
        source."""
        return self._by_fd[sock.fileno()].receive()
