"""A Linux TUN device opened with the TUNSETIFF ioctl: a non-blocking fd of raw IP packets.

Every read returns one IP packet and every write sends one (IFF_NO_PI: no packet-info
prefix). With `vnet_hdr=True` each packet is preceded by a virtio-net header, which is
what GSO/GRO offloads (TUNSETOFFLOAD) need; the caller then owns that header.
"""

import errno
import fcntl
import os
import struct
from types import TracebackType
from typing import Final, Self

TUN_CLONE_PATH: Final = "/dev/net/tun"
# The kernel's IFNAMSIZ counts the terminating NUL: names hold at most 15 bytes.
IFNAMSIZ: Final = 16

_TUNSETIFF: Final = 0x400454CA
_IFF_TUN: Final = 0x0001
_IFF_NO_PI: Final = 0x1000
_IFF_MULTI_QUEUE: Final = 0x0100
_IFF_VNET_HDR: Final = 0x4000
# struct ifreq: the name, the flags (short), padding up to the size of the union.
_IFREQ: Final = struct.Struct(f"{IFNAMSIZ}sH22x")
# Characters the kernel refuses in an interface name (dev_valid_name).
_FORBIDDEN_NAME_CHARS: Final = frozenset("/: \t\n\r\v\f\0")


class TunError(Exception):
    """The TUN device could not be opened; the message says what to do about it."""

    def __init__(self, message: str, *, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code


class TunDevice:
    """One queue of an open TUN device. Closing the last queue removes the device."""

    __slots__ = ("_closed", "fd", "multi_queue", "name", "vnet_hdr")

    def __init__(self, name: str, fd: int, *, vnet_hdr: bool, multi_queue: bool) -> None:
        self.name = name
        self.fd = fd
        self.vnet_hdr = vnet_hdr
        self.multi_queue = multi_queue
        self._closed = False

    @classmethod
    def open(cls, name: str, *, vnet_hdr: bool = False, multi_queue: bool = False) -> Self:
        """Create (or attach to) the TUN device `name` and return its non-blocking queue."""
        encoded = _check_name(name)
        flags = _IFF_TUN | _IFF_NO_PI
        if vnet_hdr:
            flags |= _IFF_VNET_HDR
        if multi_queue:
            flags |= _IFF_MULTI_QUEUE
        try:
            fd = os.open(TUN_CLONE_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(exc) from exc
        try:
            result = fcntl.ioctl(fd, _TUNSETIFF, _IFREQ.pack(encoded, flags))
        except OSError as exc:
            os.close(fd)
            raise _ioctl_error(name, exc) from exc
        kernel_name = _IFREQ.unpack(result)[0].rstrip(b"\0").decode()
        return cls(kernel_name, fd, vnet_hdr=vnet_hdr, multi_queue=multi_queue)

    def fileno(self) -> int:
        return self.fd

    def read_into(self, buffer: bytearray | memoryview) -> int:
        """Read one packet into `buffer` and return its length.

        Raises BlockingIOError when no packet is waiting. A packet longer than the buffer
        is truncated by the kernel, so size the buffer for the MTU (plus the virtio-net
        header with `vnet_hdr`).
        """
        return os.readv(self.fd, (buffer,))

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Hand one IP packet to the kernel, as if it had arrived on this interface."""
        return os.write(self.fd, packet)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd}"
        return f"<TunDevice {self.name} {state}>"


def _check_name(name: str) -> bytes:
    encoded = name.encode()
    if not encoded or name in (".", ".."):
        raise TunError(f"invalid TUN name {name!r}: give a name such as pilot0")
    if len(encoded) >= IFNAMSIZ:
        raise TunError(f"TUN name {name!r} is too long: Linux allows at most {IFNAMSIZ - 1} bytes")
    if _FORBIDDEN_NAME_CHARS & set(name):
        raise TunError(f"invalid TUN name {name!r}: no '/', ':', whitespace or NUL allowed")
    return encoded


def _open_error(exc: OSError) -> TunError:
    if exc.errno == errno.ENOENT:
        hint = "load the tun module (modprobe tun); in a container pass --device /dev/net/tun"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "run as root or grant CAP_NET_ADMIN"
    else:
        hint = "check that the kernel has TUN support"
    return TunError(f"cannot open {TUN_CLONE_PATH}: {exc.strerror}; {hint}", errno_code=exc.errno)


def _ioctl_error(name: str, exc: OSError) -> TunError:
    if exc.errno == errno.EPERM:
        hint = "creating a TUN device needs root or CAP_NET_ADMIN"
    elif exc.errno == errno.EBUSY:
        hint = f"the TUN device {name} is already open (is pilotif already running?)"
    elif exc.errno == errno.EINVAL:
        hint = (
            f"a device named {name} exists and is not a TUN with the same flags; "
            f"remove it (ip link delete {name}) or pick another name"
        )
    else:
        hint = "check that the kernel has TUN support"
    return TunError(
        f"cannot create TUN device {name}: {exc.strerror}; {hint}", errno_code=exc.errno
    )
