"""`--expose PORT[=LOCAL_PORT]`: a port of the node's overlay address whose connections
go on to a local TCP port (127.0.0.1), so that a local server is reachable by trusted
peers without a TUN. The node's port policy applies (the WireGuard device filters
before the stack sees a packet)."""

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Final

from pilotif.userspace.splice import splice

LOCAL_HOST: Final = "127.0.0.1"
CONNECT_TIMEOUT_S: Final = 10.0
STREAM_LIMIT_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class Expose:
    """One --expose."""

    port: int
    local_port: int


class Exposer:
    """Serves one Expose's connections from the overlay."""

    def __init__(self, expose: Expose) -> None:
        self.expose = expose
        self.counters: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    local = await asyncio.open_connection(
                        LOCAL_HOST, self.expose.local_port, limit=STREAM_LIMIT_BYTES
                    )
            except (OSError, TimeoutError):
                self.counters["local_refused"] += 1
                writer.transport.abort()  # the peer sees a reset, as from a closed port
                return
            self.counters["connected"] += 1
            await splice((reader, writer), local)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
