"""A local network stack in memory, for unit tests of the data path: `inject` queues
packets (or a TCP super-packet) as if local programs sent them, and a pipe becomes
readable as a TUN's fd would; `written` keeps what the data path delivered."""

import contextlib
import os
from collections.abc import Sequence
from typing import Final

from pilotif.packet.ip import BytesLike
from pilotif.packet.segments import SuperPacket

_WAKE_BYTE: Final = b"\x01"
_DRAIN_BYTES: Final = 4096


class MemoryStack:
    """Implements tun.stack.LocalStack."""

    def __init__(self, *, merges_writes: bool = False) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._queue: list[bytes | SuperPacket] = []
        self.merges_writes = merges_writes
        self.drained = True
        self.written: list[bytes] = []
        """Every packet (or merged write) delivered, copied, in order."""
        self.merged: list[bytes] = []
        """The merged writes among them."""

    def inject(self, *packets: bytes | SuperPacket) -> None:
        """Queue packets (or a super-packet) for the next reads."""
        self._queue += packets
        os.write(self._write_fd, _WAKE_BYTE)

    def fileno(self) -> int:
        return self._read_fd

    def read_batch(self, limit: int) -> list[memoryview] | SuperPacket:
        if self._queue and isinstance(self._queue[0], SuperPacket):
            found = self._queue.pop(0)
            assert isinstance(found, SuperPacket)
            self._settle()
            return found
        packets: list[memoryview] = []
        while self._queue and len(packets) < limit:
            head = self._queue[0]
            if isinstance(head, SuperPacket):
                break
            packets.append(memoryview(bytearray(head)))
            self._queue.pop(0)
        self._settle()
        return packets

    def _settle(self) -> None:
        self.drained = not self._queue
        if self.drained:
            with contextlib.suppress(BlockingIOError):
                os.read(self._read_fd, _DRAIN_BYTES)

    def write(self, packets: Sequence[BytesLike]) -> int:
        self.written += [bytes(packet) for packet in packets]
        return 0

    def write_merged(self, writes: Sequence[BytesLike]) -> int:
        self.merged += [bytes(write) for write in writes]
        return self.write(writes)

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)
