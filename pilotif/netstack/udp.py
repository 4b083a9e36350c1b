"""UDP (RFC 768) of the userspace stack, sans-IO: IP packets of protocol 17 in
(`receive`), datagrams queued on the socket bound to their port for the application
(`UdpSocket.take`), the application's datagrams out as IP packets (`send`, then
`take_output`), IPv4 and IPv6 with their checksums.

Sockets are bound per local port on every address of the node (`bind`: a port, or an
ephemeral one for a socket that only sends first). A datagram to a port nobody is bound
to is answered with an ICMP port unreachable, at most `unreachable_per_s` a second (the
stack answers stray TCP segments with resets under its own budget). Memory is bounded:
each socket queues at most `max_queued_datagrams` / `max_queued_bytes`, the node
`max_node_queued_bytes` over all its sockets, and `max_output_datagrams` wait to be sent;
what does not fit is dropped (UDP is lossy) and counted. Every dropped packet is counted
by its reason in `counters`; nothing is logged per packet. Fragments are not reassembled
(dropped: the overlay's MTU is kept by the senders, who see it).

An ICMP error about a datagram we sent (`receive_icmp`: port unreachable, another
destination unreachable, "too big"; ICMPv6's too) is the socket's that sent it: it keeps
the newest (`UdpSocket.error`, as Linux keeps one sk_err) until taken, and is marked
readable. Only the destination it names may say so (a peer speaks for itself: WireGuard's
cryptokey routing vouches for the sender's address), and only about a destination the
socket sent to lately (SENT_TO_REMEMBERED); anything else is counted.
"""

import os
import random
import struct
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from pilotif.netstack.config import DEFAULT_MTU
from pilotif.netstack.ip_packet import SegmentDrop, ip_packet, ip_payload, transport_checksum_ok
from pilotif.netstack.stack import EPHEMERAL_PORTS, LimitError
from pilotif.packet.checksum import ONES, sum_le
from pilotif.packet.icmp import IcmpError, IcmpErrorKind, parse_icmp_error, port_unreachable_packet
from pilotif.packet.ip import (
    IPV4_ADDRESS_BYTES,
    IPV4_MIN_HEADER_BYTES,
    IPV4_PROTOCOL_OFFSET,
    IPV4_VERSION,
    IPV6_HEADER_BYTES,
    IPV6_NEXT_HEADER_OFFSET,
    IPV6_VERSION,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    UDP_CHECKSUM_OFFSET,
    UDP_HEADER_BYTES,
    BytesLike,
)
from pilotif.util.lru import BoundedLru

MAX_PORT: Final = 0xFFFF
_UDP: Final = struct.Struct("!HHHH")
"""Source port, destination port, length, checksum."""
_PORT_TRIES: Final = 64
SENT_TO_REMEMBERED: Final = 64
"""The destinations (address, port) a socket remembers it sent to most recently: an ICMP
error is taken only about one of them (as Linux checks a connected socket's peer)."""
_NO_CHECKSUM: Final = 0
"""An IPv4 datagram's checksum field when its sender computed none (RFC 768)."""

Address = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class UdpConfig:
    """The limits of a node's UDP."""

    mtu: int = DEFAULT_MTU
    """Path MTU in bytes: a datagram we send must fit in one packet of it (IPv4 is sent
    with don't fragment, IPv6 is never fragmented by us)."""
    max_sockets: int = 1024
    """Cap of the bound sockets of the node."""
    max_queued_datagrams: int = 512
    """Cap of the datagrams one socket holds that the application has not taken."""
    max_queued_bytes: int = 1024 * 1024
    """Cap of the payload bytes one socket holds that the application has not taken."""
    max_node_queued_bytes: int = 16 * 1024 * 1024
    """Cap of the payload bytes all the node's sockets hold together."""
    max_output_datagrams: int = 4096
    """Cap of the packets waiting for the data path to take them (`take_output`)."""
    unreachable_per_s: int = 100
    """Cap of the ICMP port unreachable answers a second."""

    def max_payload_bytes(self, ipv6: bool) -> int:
        """The largest datagram payload one packet of the path carries."""
        ip_bytes = IPV6_HEADER_BYTES if ipv6 else IPV4_MIN_HEADER_BYTES
        return self.mtu - ip_bytes - UDP_HEADER_BYTES


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram received on a socket."""

    data: bytes
    source: Address
    """The sender's overlay address."""
    source_port: int
    destination: Address
    """Our address it was sent to."""


@dataclass(frozen=True, slots=True)
class SendError:
    """An ICMP error about a datagram a socket sent."""

    kind: IcmpErrorKind
    """PORT_UNREACHABLE: nothing listens on `port` of `address`; UNREACHABLE: `address`
    cannot be reached; TOO_BIG: the path to it carries at most `mtu` bytes (the datagram
    was dropped)."""
    address: Address
    """Where the datagram went."""
    port: int
    mtu: int
    """The path's largest packet (TOO_BIG), else 0."""


class UdpSocket:
    """A bound port: what arrives for it waits in a bounded queue until `take`n."""

    def __init__(self, owner: "UdpStack", port: int) -> None:
        self.port = port
        self._owner = owner
        self._queue: deque[Datagram] = deque()
        self.queued_bytes = 0
        self.closed = False
        self.error: SendError | None = None
        """The newest ICMP error about a datagram this socket sent, not yet taken."""
        self._sent_to: BoundedLru[tuple[bytes, int], None] = BoundedLru(SENT_TO_REMEMBERED)

    def take_error(self) -> SendError | None:
        """The error waiting (then forgotten), or None."""
        error, self.error = self.error, None
        return error

    def take(self) -> Datagram | None:
        """The oldest datagram not yet taken, or None."""
        if not self._queue:
            return None
        datagram = self._queue.popleft()
        self.queued_bytes -= len(datagram.data)
        self._owner.queued_bytes -= len(datagram.data)
        return datagram

    @property
    def pending(self) -> int:
        """Datagrams waiting to be taken."""
        return len(self._queue)

    def send(self, data: BytesLike, remote: Address, port: int) -> bool:
        """Send `data` to `remote` `port` (see UdpStack.send)."""
        return self._owner.send(self, data, remote, port)

    def close(self) -> None:
        """Unbind: what waits is dropped; the port answers port unreachable again."""
        self._owner.unbind(self)

    def _queue_datagram(self, datagram: Datagram) -> None:
        self._queue.append(datagram)
        self.queued_bytes += len(datagram.data)

    def _drop_all(self) -> int:
        dropped, self.queued_bytes = self.queued_bytes, 0
        self._queue.clear()
        return dropped


def is_udp(packet: BytesLike) -> bool:
    """Whether an IP packet says it carries UDP (lengths not yet checked)."""
    return _carries(packet, PROTO_UDP, PROTO_UDP)


def is_icmp(packet: BytesLike) -> bool:
    """Whether an IP packet says it carries ICMP (ICMPv6; lengths not yet checked)."""
    return _carries(packet, PROTO_ICMP, PROTO_ICMPV6)


def _carries(packet: BytesLike, ipv4_protocol: int, ipv6_next_header: int) -> bool:
    if len(packet) < IPV4_MIN_HEADER_BYTES:
        return False
    version = packet[0] >> 4
    if version == IPV4_VERSION:
        return packet[IPV4_PROTOCOL_OFFSET] == ipv4_protocol
    return (
        version == IPV6_VERSION
        and len(packet) >= IPV6_HEADER_BYTES
        and packet[IPV6_NEXT_HEADER_OFFSET] == ipv6_next_header
    )


def build_datagram(
    source: bytes, destination: bytes, ports: tuple[int, int], data: BytesLike
) -> bytes:
    """One IPv4 (4-byte addresses) or IPv6 packet carrying a UDP datagram, checksums
    computed (a sum of 0 is sent as 0xFFFF: 0 means none)."""
    header = bytearray(_UDP.pack(ports[0], ports[1], UDP_HEADER_BYTES + len(data), 0))
    return ip_packet(source, destination, PROTO_UDP, header, data, UDP_CHECKSUM_OFFSET)


class UdpStack:
    """The node's UDP; see the module docstring."""

    def __init__(
        self,
        addresses: Iterable[Address],
        config: UdpConfig | None = None,
        seed: bytes | None = None,
    ) -> None:
        self.config = config or UdpConfig()
        self._addresses = {address.packed: address for address in addresses}
        self._sockets: dict[int, UdpSocket] = {}
        self._random = random.Random(seed if seed is not None else os.urandom(16))
        self._output: list[bytes] = []
        self._readable: dict[UdpSocket, None] = {}
        self._budget_second = -1
        self._budget_used = 0
        self.queued_bytes = 0
        """Payload bytes all sockets hold."""
        self.counters: Counter[str] = Counter()
        """Dropped datagrams by reason, and `unreachable_sent`."""

    # -- the application's side -------------------------------------------------------
    def bind(self, port: int | None = None) -> UdpSocket:
        """A socket on `port` of every address of the node (None: a free ephemeral one);
        ValueError when the port is bound or out of range, LimitError past the caps."""
        if len(self._sockets) >= self.config.max_sockets:
            raise LimitError("too many UDP sockets")
        if port is None:
            for _ in range(_PORT_TRIES):
                port = self._random.choice(EPHEMERAL_PORTS)
                if port not in self._sockets:
                    break
            else:
                raise LimitError("no free UDP port")
        elif not 0 < port <= MAX_PORT:
            raise ValueError(f"UDP port {port} is out of range")
        elif port in self._sockets:
            raise ValueError(f"UDP port {port} is already bound")
        socket = UdpSocket(self, port)
        self._sockets[port] = socket
        return socket

    def unbind(self, socket: UdpSocket) -> None:
        """Forget a socket (UdpSocket.close calls this)."""
        if self._sockets.get(socket.port) is socket:
            del self._sockets[socket.port]
        self.queued_bytes -= socket._drop_all()
        self._readable.pop(socket, None)
        socket.closed = True

    def send(self, socket: UdpSocket, data: BytesLike, remote: Address, port: int) -> bool:
        """Queue a datagram from `socket` to `remote` `port` for the data path; False when
        the output queue is full (dropped, counted: UDP is lossy). ValueError for a port
        out of range, a datagram larger than the path carries, a closed socket or a
        family the node has no address of."""
        if socket.closed:
            raise ValueError("the UDP socket is closed")
        if not 0 < port <= MAX_PORT:
            raise ValueError(f"UDP port {port} is out of range")
        if len(data) > self.config.max_payload_bytes(remote.version == IPV6_VERSION):
            raise ValueError(
                f"a datagram of {len(data)} bytes does not fit the overlay's MTU"
                f" ({self.config.mtu})"
            )
        source = next((a for a in self._addresses if len(a) == len(remote.packed)), None)
        if source is None:
            raise ValueError(f"this node has no IPv{remote.version} address")
        if len(self._output) >= self.config.max_output_datagrams:
            self.counters["output_full"] += 1
            return False
        self._output.append(build_datagram(source, remote.packed, (socket.port, port), data))
        socket._sent_to.remember((remote.packed, port), None)
        return True

    def take_output(self) -> list[bytes]:
        """The packets to send (datagrams, port unreachable answers) since the last call."""
        output, self._output = self._output, []
        return output

    @property
    def socket_count(self) -> int:
        """Bound sockets."""
        return len(self._sockets)

    @property
    def has_output(self) -> bool:
        return bool(self._output)

    def take_readable(self) -> list[UdpSocket]:
        """The sockets that received datagrams since the last call."""
        readable = list(self._readable)
        self._readable.clear()
        return readable

    # -- the network's side -----------------------------------------------------------
    def receive(self, packet: BytesLike, now: float, *, authenticated: bool = False) -> None:
        """One IP packet of protocol 17 from the network. An `authenticated` packet
        (WireGuard's AEAD vouches for its bytes) has its checksums taken as they are."""
        try:
            source, destination, udp = ip_payload(packet, PROTO_UDP, checksums=not authenticated)
        except SegmentDrop as drop:
            self.counters[drop.reason] += 1
            return
        local = self._addresses.get(destination)
        if local is None:
            self.counters["not_local"] += 1
            return
        if len(udp) < UDP_HEADER_BYTES:
            self.counters["truncated"] += 1
            return
        source_port, destination_port, length, checksum = _UDP.unpack_from(udp)
        if not UDP_HEADER_BYTES <= length <= len(udp):
            self.counters["bad_length"] += 1
            return
        udp = udp[:length]
        if not authenticated and not self._checksum_ok(source, destination, udp, checksum):
            self.counters["bad_checksum"] += 1
            return
        if source_port == 0 or destination_port == 0:
            self.counters["bad_port"] += 1
            return
        socket = self._sockets.get(destination_port)
        if socket is None:
            self._answer_unreachable(packet, now)
            return
        self._deliver(socket, udp, source, source_port, local)

    def receive_icmp(self, packet: BytesLike, *, authenticated: bool = False) -> bool:
        """Whether `packet` is an ICMP (ICMPv6) error quoting a UDP datagram of ours (then
        it is taken: the socket that sent the datagram learns it, or a counter says why
        not); False leaves it to the TCP stack."""
        error = parse_icmp_error(packet)
        if error is None or error.protocol != PROTO_UDP:
            return False
        local = self._addresses.get(error.source)
        socket = self._sockets.get(error.source_port)
        if not authenticated and not self._icmp_checksum_ok(packet):
            self.counters["icmp_bad_checksum"] += 1
        elif local is None or len(error.destination) != len(error.source):
            self.counters["icmp_not_ours"] += 1
        elif error.sender != error.destination:
            self.counters["icmp_forged"] += 1  # only the destination speaks for itself
        elif socket is None:
            self.counters["icmp_no_socket"] += 1
        elif (error.destination, error.destination_port) not in socket._sent_to:
            self.counters["icmp_not_sent"] += 1  # about a datagram it never sent
        else:
            socket.error = _send_error(error)
            self.counters[f"icmp_{error.kind.value}"] += 1
            self._readable[socket] = None
        return True

    # -- inside -----------------------------------------------------------------------
    @staticmethod
    def _icmp_checksum_ok(packet: BytesLike) -> bool:
        protocol = PROTO_ICMP if packet[0] >> 4 == IPV4_VERSION else PROTO_ICMPV6
        try:
            source, destination, message = ip_payload(packet, protocol)
        except SegmentDrop:
            return False
        if protocol == PROTO_ICMP:
            return sum_le(message) % ONES == 0
        return transport_checksum_ok(source, destination, PROTO_ICMPV6, message)

    @staticmethod
    def _checksum_ok(source: bytes, destination: bytes, udp: memoryview, checksum: int) -> bool:
        if checksum == _NO_CHECKSUM:
            return len(source) == IPV4_ADDRESS_BYTES  # IPv6 requires one (RFC 8200 8.1)
        return transport_checksum_ok(source, destination, PROTO_UDP, udp)

    def _deliver(
        self, socket: UdpSocket, udp: memoryview, source: bytes, port: int, local: Address
    ) -> None:
        size = len(udp) - UDP_HEADER_BYTES
        config = self.config
        if (
            socket.pending >= config.max_queued_datagrams
            or socket.queued_bytes + size > config.max_queued_bytes
        ):
            self.counters["socket_queue_full"] += 1
            return
        if self.queued_bytes + size > config.max_node_queued_bytes:
            self.counters["node_queue_full"] += 1
            return
        sender = IPv4Address(source) if len(source) == IPV4_ADDRESS_BYTES else IPv6Address(source)
        socket._queue_datagram(Datagram(bytes(udp[UDP_HEADER_BYTES:]), sender, port, local))
        self.queued_bytes += size
        self._readable[socket] = None

    def _answer_unreachable(self, packet: BytesLike, now: float) -> None:
        second = int(now)
        if second != self._budget_second:
            self._budget_second, self._budget_used = second, 0
        if self._budget_used >= self.config.unreachable_per_s:
            self.counters["no_socket_unanswered"] += 1
            return
        answer = port_unreachable_packet(packet)
        if answer is None or len(self._output) >= self.config.max_output_datagrams:
            self.counters["no_socket_unanswered"] += 1
            return
        self._budget_used += 1
        self.counters["no_socket"] += 1
        self._output.append(answer)


def _send_error(error: IcmpError) -> SendError:
    address = (
        IPv4Address(error.destination)
        if len(error.destination) == IPV4_ADDRESS_BYTES
        else IPv6Address(error.destination)
    )
    return SendError(error.kind, address, error.destination_port, error.mtu)
