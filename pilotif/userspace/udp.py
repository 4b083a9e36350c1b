"""UDP sockets of a userspace node for asyncio code (`UserspaceStack.open_udp`,
`pilotif.Node.open_udp`): one netstack UDP socket (pilotif/netstack/udp.py) with
`send(data, (host, port))` (an overlay address, or with a resolver a trusted peer's name)
and `await recv()`. What arrives waits in the netstack socket's bounded queue until received;
a datagram that does not fit it is dropped there and counted.

An ICMP error about a datagram the endpoint sent is raised by the next `recv()` once the
datagrams already queued are taken, as Linux does on a connected UDP socket and asyncio's
datagram endpoints report (`error_received`): ConnectionRefusedError when nothing listens
on the port, OSError EHOSTUNREACH / EMSGSIZE for an unreachable address or a datagram too
big for the path. The endpoint stays open: a program that waits for an answer learns at
once that none will come, instead of waiting for ever; one that serves many peers catches
OSError around `recv()` (ConnectionAbortedError alone means the endpoint was closed)."""

import asyncio
import errno
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

from pilotif.netstack.udp import SendError, UdpSocket
from pilotif.packet.icmp import IcmpErrorKind
from pilotif.userspace.names import Resolve

Address = IPv4Address | IPv6Address


class UdpEndpoint:
    """A bound UDP port of the node's overlay addresses."""

    def __init__(
        self,
        socket: UdpSocket,
        loop: asyncio.AbstractEventLoop,
        kick: Callable[[], None],
        forget: Callable[["UdpEndpoint"], None],
        resolve: Resolve | None = None,
    ) -> None:
        self.socket = socket
        self._resolve = resolve
        self._loop = loop
        self._kick = kick
        self._forget = forget
        self._waiter: asyncio.Future[None] | None = None

    @property
    def port(self) -> int:
        return self.socket.port

    @property
    def closed(self) -> bool:
        return self.socket.closed

    def send(self, data: bytes, address: tuple[str | Address, int]) -> bool:
        """Send one datagram to an overlay address (with a resolver: a trusted peer's
        name or address) and port; False when the node's output queue is full (dropped:
        UDP is lossy). ValueError for an address that is not one (or no trusted peer's),
        a port out of range, a datagram larger than the overlay's MTU."""
        host, port = address
        sent = self.socket.send(data, self._target(host), port)
        self._kick()
        return sent

    def _target(self, host: str | Address) -> Address:
        if self._resolve is None or not isinstance(host, str):
            return ip_address(host)
        found = self._resolve(host)
        if found is None:
            raise ValueError(f"{host!r} is not a trusted peer")
        return found

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        """The next datagram and its sender (address, port); ConnectionAbortedError once
        the endpoint is closed; an ICMP error about a datagram it sent, once, as OSError
        (ConnectionRefusedError: nothing listens on that port; see the module docstring)."""
        while True:
            if self.socket.closed:
                raise ConnectionAbortedError("the UDP endpoint is closed")
            datagram = self.socket.take()
            if datagram is not None:
                return datagram.data, (str(datagram.source), datagram.source_port)
            error = self.socket.take_error()
            if error is not None:
                raise _os_error(error)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def on_readable(self) -> None:
        """Datagrams arrived (the stack calls this)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        """Unbind the port; a waiting recv() raises."""
        if not self.socket.closed:
            self.socket.close()
            self._forget(self)
        self.on_readable()


def _os_error(error: SendError) -> OSError:
    """What a Linux socket would raise for `error`."""
    where = f"UDP port {error.port} of {error.address}"
    if error.kind is IcmpErrorKind.PORT_UNREACHABLE:
        return ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens on {where}")
    if error.kind is IcmpErrorKind.TOO_BIG:
        return OSError(
            errno.EMSGSIZE,
            f"a datagram to {where} was dropped: the path carries at most {error.mtu} bytes",
        )
    return OSError(errno.EHOSTUNREACH, f"{error.address} is unreachable (a datagram to {where})")
