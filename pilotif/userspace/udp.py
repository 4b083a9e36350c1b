"""UDP sockets of a userspace node for asyncio code (`UserspaceStack.open_udp`,
`pilotif.Node.open_udp`): one netstack UDP socket (pilotif/netstack/udp.py) with
`send(data, (host, port))` (an overlay address, or with a resolver a trusted peer's name)
and `await recv()`. What arrives waits in the netstack socket's bounded queue until received;
a datagram that does not fit it is dropped there and counted."""

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

from pilotif.netstack.udp import UdpSocket
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
        the endpoint is closed."""
        while True:
            if self.socket.closed:
                raise ConnectionAbortedError("the UDP endpoint is closed")
            datagram = self.socket.take()
            if datagram is not None:
                return datagram.data, (str(datagram.source), datagram.source_port)
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
