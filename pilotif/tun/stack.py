"""The local network stack the data path delivers packets to and reads them from: one
small interface (wireguard-go's tun.Device: read a batch, write a batch, MTU, close),
the kernel TUN's (`pilotif.tun.offload.TunBatch`) today, a userspace stack next (the
unit tests have an in-memory one). Opening, the MTU and closing are its owner's (the
daemon's); the data path only reads and writes.
"""

from collections.abc import Sequence
from typing import Protocol

from pilotif.packet.ip import BytesLike
from pilotif.packet.segments import SuperPacket


class LocalStack(Protocol):
    """A local network stack as the data path sees it."""

    @property
    def drained(self) -> bool:
        """Whether the last `read_batch` found nothing more waiting."""
        ...

    @property
    def merges_writes(self) -> bool:
        """Whether `write_merged` takes writes with a virtio header (one TCP super-packet
        each): the device then merges a batch of one flow's segments."""
        ...

    def fileno(self) -> int:
        """A file descriptor that is readable when packets wait."""
        ...

    def read_batch(self, limit: int) -> list[memoryview] | SuperPacket:
        """Up to `limit` packets that local programs sent, or one TCP super-packet (TSO);
        views valid until the next read."""
        ...

    def write(self, packets: Sequence[BytesLike]) -> int:
        """Hand packets to local programs; the number refused."""
        ...

    def write_merged(self, writes: Sequence[BytesLike]) -> int:
        """Hand writes that carry their virtio header (`merges_writes`); the number
        refused."""
        ...
