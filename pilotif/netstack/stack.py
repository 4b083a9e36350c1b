"""The userspace TCP/IP stack of a node, sans-IO: IP packets in (`receive`), IP packets
out (`poll`), `now` passed in, `next_timer` out, events for the application
(`take_events`). It owns the connections (demultiplexed by their 4-tuple), the listeners
and their backlogs, answers ICMP echo, answers segments for no connection with a reset,
and holds the node's limits: connections in all, half-open connections (the SYN queue),
connections per remote address, the bytes all connections buffer (memory.py). Every
dropped packet is counted by its reason in `counters`; nothing is logged per packet.

After feeding packets or calling a connection, call `poll(now)`; call it again at
`next_timer()`.
"""

import hashlib
import heapq
import itertools
import os
import random
from collections import Counter, deque
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from pilotif.netstack.config import StackConfig
from pilotif.netstack.echo import echo_reply, is_echo_request
from pilotif.netstack.events import Event
from pilotif.netstack.memory import NodeMemory
from pilotif.netstack.segment import (
    SEQ_SPACE,
    TCP_RST,
    Segment,
    SegmentDrop,
    build_segment,
    parse_segment,
)
from pilotif.netstack.tcp_connection import Connection
from pilotif.netstack.tcp_state import State
from pilotif.packet.icmp import IcmpErrorKind, parse_icmp_error
from pilotif.packet.ip import PROTO_TCP, TCP_ACK, TCP_FIN, TCP_SYN, BytesLike, packet_addresses
from pilotif.packet.segments import SuperPacket

EPHEMERAL_PORTS: Final = range(49152, 65536)
"""The ports active opens take theirs from (RFC 6335)."""
ISN_TICKS_PER_S: Final = 250_000
"""RFC 6528's clock: one tick every 4 microseconds."""
_PORT_TRIES: Final = 64
STALE_TIMERS_FACTOR: Final = 2
"""The timer heap is compacted when it holds more than this many entries per scheduled
connection (re-arming a timer leaves the old entry behind until then)."""
_HEAP_SLACK: Final = 64
DEFAULT_BACKLOG: Final = 128

Address = IPv4Address | IPv6Address


class LimitError(RuntimeError):
    """An active open the node's limits refuse (connections, per peer, no free port)."""


class Listener:
    """A listening port: connections whose handshake completed wait in its queue (the
    backlog caps the queue and the handshakes under way together)."""

    def __init__(self, stack: "Stack", port: int, backlog: int) -> None:
        self.port = port
        self.backlog = backlog
        self._stack = stack
        self._queue: deque[Connection] = deque()
        self.half_open = 0

    def accept(self) -> Connection | None:
        """The oldest connection that completed its handshake, or None."""
        while self._queue:
            connection = self._queue.popleft()
            if connection.state is not State.CLOSED:
                return connection
        return None

    @property
    def pending(self) -> int:
        """Connections waiting to be accepted."""
        return len(self._queue)

    def full(self) -> bool:
        """Whether a new SYN would exceed the backlog."""
        return len(self._queue) + self.half_open >= self.backlog

    def enqueue(self, connection: Connection) -> None:
        """A handshake completed."""
        self._queue.append(connection)

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset."""
        self._stack.unlisten(self)
        while self._queue:
            self._queue.popleft().abort()


class Stack:
    """The node's TCP/IP stack; also the host of its connections (ConnectionHost)."""

    def __init__(
        self,
        addresses: Iterable[Address],
        config: StackConfig | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.config = config or StackConfig()
        self._addresses = {address.packed for address in addresses}
        self._secret = secret if secret is not None else os.urandom(32)
        self._random = random.Random(self._secret)
        self._connections: dict[tuple[bytes, int, bytes, int], Connection] = {}
        self._per_peer: Counter[bytes] = Counter()
        self._half_open: dict[Connection, Listener] = {}
        """Connections in SYN-RECEIVED, with the listener whose backlog they count in."""
        self._half_open_per_peer: Counter[bytes] = Counter()
        self._time_wait: dict[Connection, None] = {}
        """Connections in TIME-WAIT, oldest first (not counted per peer or in the cap)."""
        self._listeners: dict[int, Listener] = {}
        self._outbox: list[bytes | SuperPacket] = []
        self._events: list[Event] = []
        self._dirty: dict[Connection, None] = {}
        self._heap: list[tuple[float, int, Connection]] = []
        self._scheduled: dict[Connection, float] = {}
        self._order = itertools.count()
        self._now = 0.0
        self._budget_second = -1
        self._budget_used = 0
        self.counters: Counter[str] = Counter()
        """Dropped packets and notable reactions, by reason."""
        self.memory = NodeMemory(self.config)
        """The node's budget of buffered bytes and what its connections hold of it."""

    # -- the application's side -------------------------------------------------------
    def listen(self, port: int, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Accept connections to `port` on every address of the node."""
        if port in self._listeners:
            raise ValueError(f"port {port} is already listened on")
        listener = Listener(self, port, backlog)
        self._listeners[port] = listener
        return listener

    def unlisten(self, listener: Listener) -> None:
        """Forget a listener (Listener.close calls this)."""
        if self._listeners.get(listener.port) is listener:
            del self._listeners[listener.port]

    def connect(
        self,
        remote: Address,
        port: int,
        now: float,
        local: Address | None = None,
        local_port: int | None = None,
    ) -> Connection:
        """Open a connection (the SYN goes out at the next poll) from `local_port` (else
        an ephemeral one); raises LimitError."""
        self._now = now
        if local is None:
            local = next(ip_address(a) for a in self._addresses if len(a) == len(remote.packed))
        remote_bytes = remote.packed
        if self._active_count() >= self.config.max_connections:
            raise LimitError("too many connections")
        if self._per_peer[remote_bytes] >= self.config.max_connections_per_peer:
            raise LimitError(f"too many connections to {remote}")
        if not self.memory.has_room_for_connection():
            raise LimitError("the node's memory budget is spent")
        for _ in range(_PORT_TRIES):
            chosen = self._random.choice(EPHEMERAL_PORTS) if local_port is None else local_port
            key = (local.packed, chosen, remote_bytes, port)
            if key not in self._connections:
                break
        else:
            raise LimitError(f"no free local port towards {remote} port {port}")
        connection = self._add(key, now)
        connection.open(now)
        return connection

    def take_events(self) -> list[Event]:
        """What happened since the last call."""
        events, self._events = self._events, []
        return events

    @property
    def connection_count(self) -> int:
        """Connections in every state."""
        return len(self._connections)

    @property
    def buffered_bytes(self) -> int:
        """What the connections' buffers hold now (the budget: memory_budget_bytes)."""
        return self.memory.held_bytes

    # -- the network's side -----------------------------------------------------------
    def receive(self, packet: BytesLike, now: float, *, authenticated: bool = False) -> None:
        """One IP packet from the network (a merged, larger-than-MSS segment is fine: a run
        of one connection's segments, as a TUN's GRO write carries them). An
        `authenticated` packet (WireGuard's AEAD vouches for its bytes) has its checksums
        taken as they are: a merged one carries only a partial sum."""
        self._now = now
        if is_echo_request(packet):
            self._answer_echo(packet)
            return
        try:
            segment = parse_segment(packet, checksums=not authenticated)
        except SegmentDrop as drop:
            if drop.reason != "not_tcp" or not self._take_icmp_error(packet):
                self.counters[drop.reason] += 1
            return
        if segment.destination not in self._addresses:
            self.counters["not_local"] += 1
            return
        if segment.source_port == 0 or segment.destination_port == 0:
            self.counters["bad_port"] += 1
            return
        key = (segment.destination, segment.destination_port, segment.source, segment.source_port)
        connection = self._connections.get(key)
        if connection is not None and connection.takes_new_syn(segment):
            self.counters["time_wait_reused"] += 1
            connection.end_time_wait()
            connection = None
        if connection is not None:
            connection.on_segment(segment, now)
            if connection.state is not State.CLOSED:
                self._dirty[connection] = None
            return
        self._on_no_connection(key, segment, now)

    def poll(self, now: float) -> list[bytes | SuperPacket]:
        """Run the timers that are due, send what connections have to send; the packets
        (and, with `large_segments`, large segments: SuperPackets to cut as TSO does)."""
        self._now = now
        while self._heap and self._heap[0][0] <= now:
            deadline, _, connection = heapq.heappop(self._heap)
            if self._scheduled.get(connection) != deadline:
                continue
            del self._scheduled[connection]
            connection.on_timer(now)
            self._dirty[connection] = None
        batch = list(self._dirty)
        self._dirty.clear()
        for connection in batch:
            if connection.state is not State.CLOSED:
                connection.transmit(now)
            self._reschedule(connection)
        packets, self._outbox = self._outbox, []
        return packets

    def next_timer(self) -> float | None:
        """When poll must next run (now, when a connection waits to send)."""
        if self._dirty:
            return self._now
        while self._heap:
            deadline, _, connection = self._heap[0]
            if self._scheduled.get(connection) == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    # -- ConnectionHost ---------------------------------------------------------------
    def emit(self, packet: bytes | SuperPacket) -> None:
        self._outbox.append(packet)

    def report(self, event: Event) -> None:
        self._events.append(event)

    def wake(self, connection: Connection) -> None:
        if connection.state is not State.CLOSED:
            self._dirty[connection] = None

    def forget(self, connection: Connection) -> None:
        key = (*connection.local, *connection.remote)
        if self._connections.get(key) is connection:
            del self._connections[key]
            if connection in self._time_wait:
                del self._time_wait[connection]
            else:
                self._release_peer(connection)
        self._leave_half_open(connection)
        self._scheduled.pop(connection, None)
        self._dirty.pop(connection, None)

    def time_wait(self, connection: Connection) -> None:
        if connection in self._time_wait:
            return
        self._time_wait[connection] = None
        self._release_peer(connection)
        if len(self._time_wait) > self.config.max_time_wait:
            self.counters["time_wait_recycled"] += 1
            next(iter(self._time_wait)).end_time_wait()

    def established(self, connection: Connection) -> None:
        self._leave_half_open(connection)
        if connection.listener_port is None:
            return
        listener = self._listeners.get(connection.listener_port)
        if listener is None:
            connection.abort()
            return
        listener.enqueue(connection)

    def allow_challenge(self) -> bool:
        second = int(self._now)
        if second != self._budget_second:
            self._budget_second, self._budget_used = second, 0
        if self._budget_used >= self.config.challenge_acks_per_s:
            self.counters["challenge_budget_spent"] += 1
            return False
        self._budget_used += 1
        return True

    def count(self, reason: str) -> None:
        self.counters[reason] += 1

    # -- inside -----------------------------------------------------------------------
    def _active_count(self) -> int:
        return len(self._connections) - len(self._time_wait)

    def _release_peer(self, connection: Connection) -> None:
        remote = connection.remote[0]
        self._per_peer[remote] -= 1
        if self._per_peer[remote] <= 0:
            del self._per_peer[remote]

    def _add(self, key: tuple[bytes, int, bytes, int], now: float) -> Connection:
        local, local_port, remote, remote_port = key
        connection = Connection(
            self,
            self.config,
            (local, local_port),
            (remote, remote_port),
            self._isn(key, now),
            self.memory,
        )
        self._connections[key] = connection
        self._per_peer[remote] += 1
        self._dirty[connection] = None
        return connection

    def _isn(self, key: tuple[bytes, int, bytes, int], now: float) -> int:
        """RFC 6528: a 4-microsecond clock plus a keyed hash of the 4-tuple."""
        local, local_port, remote, remote_port = key
        material = local + local_port.to_bytes(2) + remote + remote_port.to_bytes(2)
        digest = hashlib.blake2s(material, key=self._secret[:32], digest_size=4).digest()
        return (int(now * ISN_TICKS_PER_S) + int.from_bytes(digest)) % SEQ_SPACE

    def _leave_half_open(self, connection: Connection) -> None:
        listener = self._half_open.pop(connection, None)
        if listener is not None:
            listener.half_open -= 1
            remote = connection.remote[0]
            self._half_open_per_peer[remote] -= 1
            if self._half_open_per_peer[remote] <= 0:
                del self._half_open_per_peer[remote]

    def _reschedule(self, connection: Connection) -> None:
        deadline = connection.deadline() if connection.state is not State.CLOSED else None
        if deadline is None:
            self._scheduled.pop(connection, None)
        elif self._scheduled.get(connection) != deadline:
            self._scheduled[connection] = deadline
            heapq.heappush(self._heap, (deadline, next(self._order), connection))
            if len(self._heap) > STALE_TIMERS_FACTOR * len(self._scheduled) + _HEAP_SLACK:
                self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop the heap's entries that a later reschedule made stale (each re-armed timer
        leaves one), so the heap stays within a few entries per connection."""
        self._heap = [entry for entry in self._heap if self._scheduled.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)

    def _take_icmp_error(self, packet: BytesLike) -> bool:
        """Whether `packet` is an ICMP error about one of our TCP segments (then it is
        taken). A "too big" (the data path sends one when a segment exceeds a peer's path
        MTU) cuts that connection's segments smaller from now on (`mss_lowered`); a
        destination unreachable is only counted (`icmp_unreachable`): TCP has its resets
        and its timers (RFC 5927: such errors are easily forged)."""
        error = parse_icmp_error(packet)
        if error is None or error.protocol != PROTO_TCP or error.source not in self._addresses:
            return False
        if error.kind is not IcmpErrorKind.TOO_BIG:
            self.counters["icmp_unreachable"] += 1
            return True
        key = (error.source, error.source_port, error.destination, error.destination_port)
        connection = self._connections.get(key)
        if connection is None:
            self.counters["too_big_no_connection"] += 1
        elif connection.lower_path_mtu(error.mtu):
            self.counters["mss_lowered"] += 1
        return True

    def _answer_echo(self, packet: BytesLike) -> None:
        addresses = packet_addresses(packet)
        if addresses is None or addresses[1] not in self._addresses:
            self.counters["not_local" if addresses else "truncated"] += 1
            return
        reply = echo_reply(packet)
        if reply is None:
            self.counters["bad_echo"] += 1
            return
        self.counters["echo_answered"] += 1
        self._outbox.append(reply)

    def _on_no_connection(
        self, key: tuple[bytes, int, bytes, int], segment: Segment, now: float
    ) -> None:
        flags = segment.flags
        if flags & TCP_RST:
            self.counters["no_connection"] += 1
            return
        listener = self._listeners.get(segment.destination_port)
        if listener is None or not flags & TCP_SYN or flags & TCP_ACK:
            self.counters["no_connection"] += 1
            self._reset_for(segment)
            return
        reason = self._syn_refusal(listener, segment.source)
        if reason:
            self.counters[reason] += 1
            return
        connection = self._add(key, now)
        connection.listener_port = listener.port
        self._half_open[connection] = listener
        self._half_open_per_peer[segment.source] += 1
        listener.half_open += 1
        connection.accept_syn(segment, now)

    def _syn_refusal(self, listener: Listener, remote: bytes) -> str:
        """Why a SYN for a listener is dropped (the peer retries), or ''."""
        if self._active_count() >= self.config.max_connections:
            return "connections_full"
        if len(self._half_open) >= self.config.max_half_open:
            return "syn_queue_full"
        if not self.memory.has_room_for_connection():
            return "memory_full"
        if self._half_open_per_peer[remote] >= self.config.max_half_open_per_peer:
            return "peer_syn_limit"
        if self._per_peer[remote] >= self.config.max_connections_per_peer:
            return "peer_limit"
        if listener.full():
            return "backlog_full"
        return ""

    def _reset_for(self, segment: Segment) -> None:
        """RFC 9293 3.10.7.1: a reset for a segment that reached no connection."""
        if not self.allow_challenge():
            return
        ports = (segment.destination_port, segment.source_port)
        if segment.flags & TCP_ACK:
            packet = build_segment(
                segment.destination, segment.source, ports, segment.ack, 0, TCP_RST, 0
            )
        else:
            length = len(segment.payload) + bool(segment.flags & TCP_SYN)
            length += bool(segment.flags & TCP_FIN)
            ack = (segment.seq + length) % SEQ_SPACE
            packet = build_segment(
                segment.destination, segment.source, ports, 0, ack, TCP_RST | TCP_ACK, 0
            )
        self._outbox.append(packet)
