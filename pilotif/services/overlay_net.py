"""How a node's services open and accept TCP connections on the overlay: through the
kernel (a TUN node: asyncio's own sockets on the overlay address) or through a userspace
stack in the process (pilotif.userspace.UserspaceStack has the same two calls)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]
"""What serves one accepted connection (as asyncio.start_server's callback)."""


class OverlayServer(Protocol):
    """A listening port."""

    @property
    def port(self) -> int: ...

    def close(self) -> None: ...


class OverlayNet(Protocol):
    """TCP on the overlay, as asyncio streams."""

    async def open_connection(
        self, address: str, port: int, *, limit: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    async def start_server(
        self, handler: ConnectedCallback, port: int, *, limit: int
    ) -> OverlayServer: ...


class _KernelServer:
    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self._server.close()


class KernelNet:
    """The kernel's TCP, servers bound to `address` (the node's overlay address on its
    TUN; port 0 picks a free port)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    async def open_connection(
        self, address: str, port: int, *, limit: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(address, port, limit=limit)

    async def start_server(
        self, handler: ConnectedCallback, port: int, *, limit: int
    ) -> OverlayServer:
        return _KernelServer(await asyncio.start_server(handler, self.address, port, limit=limit))


KERNEL = KernelNet()
"""Outbound connections through the kernel."""
