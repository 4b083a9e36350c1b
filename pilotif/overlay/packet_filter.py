"""One peer's inbound port policy as the device applies it to every packet the peer sends.

The node core compiles the policy (`pilotif.node.policy`) into a `PacketFilter` per peer;
a peer without one gets everything through. What a filter decides, per packet:

- TCP: a segment that opens a connection (SYN without ACK) is checked against the
  allowed ports; every other segment passes. It belongs to a connection that was opened
  through this check or that this node opened itself (stateless, as `iptables --syn`:
  the kernel answers a stray segment with a reset and hands nothing to a program).
- UDP: a datagram to an allowed port passes, and so does one that answers a datagram
  this node sent to that peer (the same two ports reversed) within UDP_REPLY_TIMEOUT_S.
- ICMP and ICMPv6: an echo request passes if the policy allows `icmp`; everything else
  (echo replies, errors about our own packets) passes.
- An IPv4 fragment after the first carries no ports and passes: its first fragment was
  checked, and without it nothing reassembles.
- Anything else (other protocols, IPv6 extension headers): the policy's default.

Ports are decided by a sorted list of intervals (`PortDecisions`), one per protocol.
"""

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from pilotif.overlay.crypto import BytesLike

UDP_REPLY_TIMEOUT_S: Final = 180.0
"""How long a datagram we sent lets the peer's answers to it in (Nebula: 3 minutes)."""
MAX_UDP_FLOWS: Final = 4096
"""UDP flows remembered per peer (the least recently used go first)."""
PORT_COUNT: Final = 65536

_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_PROTO_ICMP: Final = 1
_PROTO_ICMPV6: Final = 58
_ICMP_ECHO: Final = 8
_ICMPV6_ECHO: Final = 128
_TCP_SYN: Final = 0x02
_TCP_ACK: Final = 0x10
_TCP_FLAGS_OFFSET: Final = 13
_IPV4_FRAGMENT_OFFSET_MASK: Final = 0x1FFF
_IPV4_HEADER_BYTES: Final = 20
_IPV4_PLAIN_FIRST_BYTE: Final = 0x45
_PLAIN_TCP_FLAGS: Final = _IPV4_HEADER_BYTES + _TCP_FLAGS_OFFSET
_IPV4_PROTO_BYTE: Final = 9
_OPENS: Final = 1
_SYN_ONLY: Final = bytes(
    _OPENS if flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN else 0 for flags in range(256)
)
"""A translation table: the TCP flags bytes that open a connection become _OPENS."""
_IPV6_HEADER_BYTES: Final = 40
_PORTS_BYTES: Final = 4


class PortDecisions:
    """Whether each port 0-65535 passes, as intervals: `starts[i]` begins a run of ports
    whose decision is `allowed[i]`."""

    __slots__ = ("allowed", "starts")

    def __init__(self, starts: Sequence[int], allowed: Sequence[bool]) -> None:
        self.starts = list(starts)
        self.allowed = list(allowed)

    @classmethod
    def build(
        cls,
        allow: Sequence[tuple[int, int]],
        deny: Sequence[tuple[int, int]],
        default: bool,
    ) -> "PortDecisions":
        """Decisions where a port in a `deny` range is refused, else one in an `allow`
        range passes, else `default` holds (ranges are inclusive)."""
        edges = {0}
        for low, high in (*allow, *deny):
            edges.update((low, high + 1))
        starts = sorted(edge for edge in edges if edge < PORT_COUNT)
        allowed: list[bool] = []
        for start in starts:
            if any(low <= start <= high for low, high in deny):
                allowed.append(False)
            else:
                allowed.append(default or any(low <= start <= high for low, high in allow))
        merged_starts, merged = [starts[0]], [allowed[0]]
        for start, decision in zip(starts[1:], allowed[1:], strict=True):
            if decision != merged[-1]:
                merged_starts.append(start)
                merged.append(decision)
        return cls(merged_starts, merged)

    def allows(self, port: int) -> bool:
        return self.allowed[bisect.bisect_right(self.starts, port) - 1]

    @property
    def all_allowed(self) -> bool:
        return self.allowed == [True]


class PacketFilter:
    """The device-side policy of one peer; see the module docstring."""

    __slots__ = ("icmp_echo", "other", "records_udp", "tcp", "udp", "udp_flows")

    def __init__(
        self, tcp: PortDecisions, udp: PortDecisions, icmp_echo: bool, other: bool
    ) -> None:
        self.tcp = tcp
        self.udp = udp
        self.icmp_echo = icmp_echo
        self.other = other
        self.records_udp = not udp.all_allowed
        """Whether outbound UDP must be remembered (some inbound UDP is refused)."""
        self.udp_flows: OrderedDict[tuple[int, int], float] = OrderedDict()
        """(our port, their port) of datagrams we sent -> until when answers pass."""

    def note_outbound(self, packet: BytesLike, now: float) -> None:
        """A packet we send to the peer: remember a UDP flow so its answers pass."""
        transport = _transport_offset(packet, _PROTO_UDP)
        if transport < 0 or len(packet) < transport + _PORTS_BYTES:
            return
        ours = packet[transport] << 8 | packet[transport + 1]
        theirs = packet[transport + 2] << 8 | packet[transport + 3]
        flows = self.udp_flows
        flows[(ours, theirs)] = now + UDP_REPLY_TIMEOUT_S
        flows.move_to_end((ours, theirs))
        if len(flows) > MAX_UDP_FLOWS:
            flows.popitem(last=False)

    def allows(self, packet: BytesLike, now: float) -> bool:
        """Whether a (well-formed, already source-checked) packet from the peer passes."""
        if (
            packet[0] == _IPV4_PLAIN_FIRST_BYTE
            and packet[9] == _PROTO_TCP
            and len(packet) > _PLAIN_TCP_FLAGS
            and packet[_PLAIN_TCP_FLAGS] & (_TCP_SYN | _TCP_ACK) != _TCP_SYN
        ):
            # The common case first: a segment of an open connection (or a later
            # fragment, which passes anyway).
            return True
        return self._decide(packet, now)

    def _decide(self, packet: BytesLike, now: float) -> bool:
        version = packet[0] >> 4
        if version == 4:
            header = (packet[0] & 0x0F) * 4
            if (packet[6] << 8 | packet[7]) & _IPV4_FRAGMENT_OFFSET_MASK:
                return True
            proto = packet[9]
            echo = _ICMP_ECHO
        else:
            header = _IPV6_HEADER_BYTES
            proto = packet[6]
            echo = _ICMPV6_ECHO
        if proto == _PROTO_TCP:
            if len(packet) < header + _TCP_FLAGS_OFFSET + 1:
                return False
            flags = packet[header + _TCP_FLAGS_OFFSET]
            if flags & (_TCP_SYN | _TCP_ACK) != _TCP_SYN:
                return True
            return self.tcp.allows(packet[header + 2] << 8 | packet[header + 3])
        if proto == _PROTO_UDP:
            if len(packet) < header + _PORTS_BYTES:
                return False
            ours = packet[header + 2] << 8 | packet[header + 3]
            if self.udp.allows(ours):
                return True
            theirs = packet[header] << 8 | packet[header + 1]
            until = self.udp_flows.get((ours, theirs))
            return until is not None and now < until
        if proto in (_PROTO_ICMP, _PROTO_ICMPV6):
            return len(packet) <= header or packet[header] != echo or self.icmp_echo
        return self.other

    def passes_rows(self, plaintexts: memoryview, count: int, row_bytes: int) -> bool:
        """Whether every packet of a decrypted batch (plain IPv4 headers, one per
        `row_bytes`) passes without looking at each: TCP segments that open nothing.
        (Strided byte copies and two C-level scans: 5x what numpy views cost here.)"""
        end = count * row_bytes
        protos = plaintexts[_IPV4_PROTO_BYTE:end:row_bytes].tobytes()
        flags = plaintexts[_PLAIN_TCP_FLAGS:end:row_bytes].tobytes()
        return protos.count(_PROTO_TCP) == count and _OPENS not in flags.translate(_SYN_ONLY)


def _transport_offset(packet: BytesLike, proto: int) -> int:
    """Where the transport header of a first (or only) fragment of `proto` starts, or -1."""
    if not packet:
        return -1
    if packet[0] >> 4 == 4:
        if len(packet) < _IPV4_HEADER_BYTES or packet[9] != proto:
            return -1
        if (packet[6] << 8 | packet[7]) & _IPV4_FRAGMENT_OFFSET_MASK:
            return -1
        return (packet[0] & 0x0F) * 4
    if len(packet) < _IPV6_HEADER_BYTES or packet[6] != proto:
        return -1
    return _IPV6_HEADER_BYTES
