"""`--forward LOCAL_PORT:PEER:PORT`: a local TCP port (on loopback) whose connections go
on to a peer's port over the overlay, for programs that know no proxy. PEER is resolved
when a connection comes (a peer trusted later is found)."""

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Final

from pilotif.services.overlay_net import OverlayNet
from pilotif.userspace.names import Resolve
from pilotif.userspace.splice import splice

CONNECT_TIMEOUT_S: Final = 20.0
STREAM_LIMIT_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class Forward:
    """One --forward."""

    local_port: int
    peer: str
    port: int


class Forwarder:
    """Serves one Forward's local connections."""

    def __init__(self, forward: Forward, net: OverlayNet, resolve: Resolve) -> None:
        self.forward = forward
        self._net = net
        self._resolve = resolve
        self.counters: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        forward = self.forward
        address = self._resolve(forward.peer)
        try:
            if address is None:
                self.counters["unknown_host"] += 1
                return
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    remote = await self._net.open_connection(
                        str(address), forward.port, limit=STREAM_LIMIT_BYTES
                    )
            except (OSError, TimeoutError):
                self.counters["connect_failed"] += 1
                return
            self.counters["connected"] += 1
            await splice((reader, writer), remote)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
