"""`--expose-udp PORT[=LOCAL_PORT]`: a UDP port of the node's overlay address whose
datagrams go on to a local UDP port (127.0.0.1), and the local server's answers back to
the peer that sent them, so that a local UDP server is reachable by trusted peers without
a TUN. The node's port policy applies (the WireGuard device filters before the stack
sees a packet).

Each peer address and port is a flow: a local UDP socket of its own (the local server
sees one client per flow, as behind a NAT), kept while datagrams pass either way and
closed after FLOW_IDLE_S without any; at most MAX_FLOWS at once (the least recently used
closes first). The flow table (`FlowTable`) is sans-IO: `now` passed in. Drops and
closures are counted by reason in `counters`; an ICMP error about an answer sent to a peer
too (`peer_unreachable`: the flow stays until it idles out, as a NAT's would).
"""

import asyncio
from collections import Counter, OrderedDict
from typing import Final, Generic, TypeVar, cast

from pilotif.userspace.expose import LOCAL_HOST, Expose
from pilotif.userspace.udp import UdpEndpoint

FLOW_IDLE_S: Final = 120.0
"""How long a flow lives without a datagram either way (Linux's conntrack keeps an
answered UDP flow 120 s)."""
MAX_FLOWS: Final = 256
"""Cap of the flows of one exposed port."""
SWEEPS_PER_IDLE: Final = 4
"""How many times within FLOW_IDLE_S idle flows are looked for."""

Key = tuple[str, int]
"""A peer's overlay address and port."""
T = TypeVar("T")


class FlowTable(Generic[T]):
    """Flows by peer, least recently used first, each with the time it was last used."""

    def __init__(self, limit: int = MAX_FLOWS, idle_s: float = FLOW_IDLE_S) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self._flows: OrderedDict[Key, tuple[T, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, key: Key, now: float) -> T | None:
        """The flow of `key`, marked used at `now`, or None."""
        entry = self._flows.get(key)
        if entry is None:
            return None
        self._flows[key] = (entry[0], now)
        self._flows.move_to_end(key)
        return entry[0]

    def add(self, key: Key, flow: T, now: float) -> list[T]:
        """Keep a new flow; the flows it pushed out (past the cap), to close."""
        self._flows[key] = (flow, now)
        evicted = []
        while len(self._flows) > self.limit:
            evicted.append(self._flows.popitem(last=False)[1][0])
        return evicted

    def touch(self, key: Key, now: float) -> None:
        """A datagram passed on the flow of `key` (if it is still there)."""
        self.get(key, now)

    def expire(self, now: float) -> list[T]:
        """Remove and return the flows unused for idle_s."""
        expired = []
        while self._flows:
            key, (flow, used) = next(iter(self._flows.items()))
            if now - used < self.idle_s:
                break
            del self._flows[key]
            expired.append(flow)
        return expired

    def clear(self) -> list[T]:
        """Remove and return every flow."""
        flows = [flow for flow, _ in self._flows.values()]
        self._flows.clear()
        return flows


class _LocalSide(asyncio.DatagramProtocol):
    """One flow's local socket: the local server's answers go back to the peer."""

    def __init__(self, owner: "UdpExposer", peer: Key) -> None:
        self._owner = owner
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._owner.answer(self.peer, data)

    def error_received(self, exc: Exception) -> None:
        self._owner.counters["local_refused"] += 1


class UdpExposer:
    """Serves one --expose-udp: the overlay port's datagrams to the local port and back."""

    def __init__(self, expose: Expose, overlay: UdpEndpoint, idle_s: float = FLOW_IDLE_S) -> None:
        self.expose = expose
        self._overlay = overlay
        self._flows: FlowTable[_LocalSide] = FlowTable(idle_s=idle_s)
        self._sweep_interval_s = idle_s / SWEEPS_PER_IDLE
        self._loop = asyncio.get_running_loop()
        self.counters: Counter[str] = Counter()
        """Datagrams in (`forwarded`) and out (`answered`), drops and flows by reason."""

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    async def run(self) -> None:
        """Until cancelled (then every flow is closed)."""
        next_sweep = self._loop.time() + self._sweep_interval_s
        try:
            while True:
                received: tuple[bytes, Key] | None = None
                try:
                    async with asyncio.timeout_at(next_sweep):
                        received = await self._overlay.recv()
                except TimeoutError:
                    pass
                except ConnectionAbortedError:
                    raise
                except OSError:  # an ICMP error about an answer: the flow idles out
                    self.counters["peer_unreachable"] += 1
                now = self._loop.time()
                if now >= next_sweep:
                    self._close(self._flows.expire(now), "flow_expired")
                    next_sweep = now + self._sweep_interval_s
                if received is not None:
                    await self._forward(*received, now)
        finally:
            self._close(self._flows.clear(), "flow_closed")

    def answer(self, peer: Key, data: bytes) -> None:
        """The local server answered on the flow of `peer`."""
        self._flows.touch(peer, self._loop.time())
        try:
            sent = self._overlay.send(data, peer)
        except ValueError:
            self.counters["too_big"] += 1
            return
        self.counters["answered" if sent else "output_full"] += 1

    async def _forward(self, data: bytes, peer: Key, now: float) -> None:
        flow = self._flows.get(peer, now)
        if flow is None:
            try:
                _, flow = await self._loop.create_datagram_endpoint(
                    lambda: _LocalSide(self, peer),
                    remote_addr=(LOCAL_HOST, self.expose.local_port),
                )
            except OSError:
                self.counters["local_socket_failed"] += 1
                return
            self.counters["flow_opened"] += 1
            self._close(self._flows.add(peer, flow, now), "flow_evicted")
        if flow.transport is not None:
            flow.transport.sendto(data)
            self.counters["forwarded"] += 1

    def _close(self, flows: list[_LocalSide], reason: str) -> None:
        for flow in flows:
            if flow.transport is not None:
                flow.transport.close()
            self.counters[reason] += 1
