"""One peer's inbound port policy as the device applies it to every packet the peer sends.

The node core compiles the policy (`pilotif.node.policy`) into a `PacketFilter` per peer;
a peer without one gets everything through. A filter judges a packet by what the
receiving kernel will read in it: the real upper-layer protocol and port.

- IPv6 extension headers (Hop-by-Hop, Routing, Fragment, Destination Options,
  Authentication) are walked to the upper-layer header, at most
  MAX_IPV6_EXTENSION_HEADERS of them within MAX_IPV6_HEADER_CHAIN_BYTES. A chain that is
  malformed, truncated, too long or holds a second Fragment header, and a first fragment
  without the upper-layer header it needs, cannot be judged: dropped
  (`policy_unreadable`). Other next headers (ESP, No Next Header, unknown) are protocols
  of their own: the policy's default.
- TCP: a segment that opens a connection (SYN without ACK) is checked against the
  allowed ports; every other segment passes. It belongs to a connection that was opened
  through this check or that this node opened itself (stateless, as `iptables --syn`:
  the kernel answers a stray segment with a reset and hands nothing to a program).
- UDP: a datagram to an allowed port passes, and so does one that answers a datagram
  this node sent to that peer (the same addresses and ports, reversed) within
  UDP_REPLY_TIMEOUT_S.
- ICMP and ICMPv6: an echo request passes if the policy allows `icmp`; an echo reply
  passes; an error (destination unreachable, packet too big, time exceeded, parameter
  problem) passes when the packet it quotes is one this node sent to that peer (from the
  address the error comes to, to the address it comes from); every other type
  (redirects, router and neighbour discovery, timestamps, ...) is dropped.
- Fragments (IPv4, and IPv6 Fragment headers with an offset or more to come): the first
  fragment is judged as above and, when it passes, the datagram's identification is
  remembered for FRAGMENT_TIMEOUT_S; a later fragment passes only for a remembered
  datagram (`fragment_unmatched` otherwise, also when it overtook its first fragment).
  Later fragments carry no ports: this keeps a port check from resting on the kernel's
  handling of overlapping fragments.
- Any other protocol: the policy's default.

Ports are decided by a sorted list of intervals (`PortDecisions`), one per protocol.
"""

import bisect
from collections.abc import Sequence
from enum import StrEnum
from typing import Final

from pilotif.packet.ip import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IPV4_DESTINATION,
    IPV4_FLAGS_FRAGMENT_OFFSET,
    IPV4_ID_OFFSET,
    IPV4_MIN_HEADER_BYTES,
    IPV4_PLAIN_FIRST_BYTE,
    IPV4_PROTOCOL_OFFSET,
    IPV4_SOURCE,
    IPV4_VERSION,
    IPV6_DESTINATION,
    IPV6_HEADER_BYTES,
    IPV6_NEXT_HEADER_OFFSET,
    IPV6_SOURCE,
    IPV6_VERSION,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FLAGS_OFFSET,
    TCP_SYN,
    BytesLike,
)
from pilotif.util.lru import BoundedLru

UDP_REPLY_TIMEOUT_S: Final = 180.0
"""How long a datagram we sent lets the peer's answers to it in (Nebula: 3 minutes)."""
MAX_UDP_FLOWS: Final = 4096
"""UDP flows remembered per peer (the least recently used go first)."""
FRAGMENT_TIMEOUT_S: Final = 60.0
"""How long a first fragment that passed lets the rest of its datagram in (Linux gives
up reassembling after 30 s for IPv4, 60 s for IPv6)."""
MAX_FRAGMENTED_DATAGRAMS: Final = 256
"""Fragmented datagrams remembered per peer (the least recently used go first)."""
MAX_IPV6_EXTENSION_HEADERS: Final = 8
"""Extension headers walked before a packet is refused as unreadable (RFC 8200's order
has six at most)."""
MAX_IPV6_HEADER_CHAIN_BYTES: Final = 1024
"""How far past the fixed IPv6 header the upper-layer header may start."""
PORT_COUNT: Final = 65536


class Refusal(StrEnum):
    """Why the filter refuses a packet; the device counts each as the drop reason of the
    same name."""

    POLICY_DENIED = "policy_denied"
    """The port policy refuses it."""
    POLICY_UNREADABLE = "policy_unreadable"
    """The policy cannot judge it, so refuses: an IPv6 extension header chain that is
    malformed, truncated or too long, or a first fragment without the transport header
    its ports are in."""
    FRAGMENT_UNMATCHED = "fragment_unmatched"
    """A later fragment whose first fragment did not pass (or was not seen first, or too
    long ago)."""


_HOP_BY_HOP: Final = 0
_ROUTING: Final = 43
_FRAGMENT: Final = 44
_AUTHENTICATION: Final = 51
_DESTINATION_OPTIONS: Final = 60
_IPV6_EXTENSIONS: Final = frozenset(
    (_HOP_BY_HOP, _ROUTING, _FRAGMENT, _AUTHENTICATION, _DESTINATION_OPTIONS)
)
MAY_CARRY_UDP: Final = frozenset((PROTO_UDP, *_IPV6_EXTENSIONS))
"""Protocol (IPv4) or next header (IPv6) bytes of a packet that may be UDP: the packets
whose answers `PacketFilter.note_outbound` may have to remember."""
_EXTENSION_MIN_BYTES: Final = 8
_EXTENSION_UNIT_BYTES: Final = 8
_AH_UNIT_BYTES: Final = 4
_AH_EXTRA_UNITS: Final = 2
_FRAGMENT_MORE: Final = 0x0001
_FRAGMENT_OFFSET_SHIFT: Final = 3

_ICMP_ERRORS: Final = frozenset((3, 11, 12))
"""Destination unreachable (fragmentation needed among them), time exceeded, parameter
problem."""
_ICMPV6_ERRORS: Final = frozenset((1, 2, 3, 4))
"""Destination unreachable, packet too big, time exceeded, parameter problem."""
_ICMP_HEADER_BYTES: Final = 8
"""Where an error's quoted packet starts."""

_IPV4_FRAGMENT_OFFSET_MASK: Final = 0x1FFF
_IPV4_MORE_FRAGMENTS: Final = 0x2000
_IPV4_FRAGMENT_HIGH_MASK: Final = 0x3F
"""The More Fragments flag and the offset's high bits in the sixth byte of IPv4."""
_PLAIN_TCP_FLAGS: Final = IPV4_MIN_HEADER_BYTES + TCP_FLAGS_OFFSET
_OPENS: Final = 1
_SYN_ONLY: Final = bytes(
    _OPENS if flags & (TCP_SYN | TCP_ACK) == TCP_SYN else 0 for flags in range(256)
)
"""A translation table: the TCP flags bytes that open a connection become _OPENS."""
_FRAGMENTED: Final = bytes(_OPENS if byte & _IPV4_FRAGMENT_HIGH_MASK else 0 for byte in range(256))
"""A translation table: the sixth IPv4 bytes of a fragment (more to come, or an offset of
256 words or more) become _OPENS."""
_PORTS_BYTES: Final = 4
_IPV4_ID_BYTES: Final = 2
_LATER_FRAGMENT: Final = -1
"""What `_upper_layer` says for a fragment after the first: no upper-layer header."""

_Fragment = tuple[bytes, bytes, bytes, int]
"""A fragmented datagram: source, destination, identification, and the IPv4 protocol
(0 for IPv6), what the kernel reassembles by."""
_Flow = tuple[bytes, bytes, int, int]
"""A UDP flow: our address, theirs, our port, theirs."""


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

    __slots__ = (
        "fragments",
        "icmp_echo",
        "other",
        "records_udp",
        "tcp",
        "udp",
        "udp_flows",
    )

    def __init__(
        self, tcp: PortDecisions, udp: PortDecisions, icmp_echo: bool, other: bool
    ) -> None:
        self.tcp = tcp
        self.udp = udp
        self.icmp_echo = icmp_echo
        self.other = other
        self.records_udp = not udp.all_allowed
        """Whether outbound UDP must be remembered (some inbound UDP is refused)."""
        self.udp_flows: BoundedLru[_Flow, float] = BoundedLru(MAX_UDP_FLOWS)
        """UDP flows we sent on -> until when their answers pass."""
        self.fragments: BoundedLru[_Fragment, float] = BoundedLru(MAX_FRAGMENTED_DATAGRAMS)
        """Datagrams whose first fragment passed -> until when their later ones pass."""

    def note_sent(self, packets: Sequence[BytesLike], now: float) -> None:
        """Packets we send to the peer (all to one destination): remember the UDP flows
        they open, when this filter must."""
        if not self.records_udp:
            return
        proto_at = (
            IPV4_PROTOCOL_OFFSET if packets[0][0] >> 4 == IPV4_VERSION else IPV6_NEXT_HEADER_OFFSET
        )
        for packet in packets:
            if packet[proto_at] in MAY_CARRY_UDP:
                self.note_outbound(packet, now)

    def note_outbound(self, packet: BytesLike, now: float) -> None:
        """A packet we send to the peer: remember a UDP flow so its answers pass."""
        upper = _upper_layer(packet)
        if isinstance(upper, Refusal) or upper[0] != PROTO_UDP:
            return
        transport = upper[1]
        if len(packet) < transport + _PORTS_BYTES:
            return
        ours, theirs = _addresses(packet)
        flow = (
            ours,
            theirs,
            packet[transport] << 8 | packet[transport + 1],
            packet[transport + 2] << 8 | packet[transport + 3],
        )
        self.udp_flows.remember(flow, now + UDP_REPLY_TIMEOUT_S)

    def judge(self, packet: BytesLike, now: float) -> Refusal | None:
        """Why a (well-formed, already source-checked) packet from the peer is refused,
        or None when it passes."""
        if (
            packet[0] == IPV4_PLAIN_FIRST_BYTE
            and packet[IPV4_PROTOCOL_OFFSET] == PROTO_TCP
            and len(packet) > _PLAIN_TCP_FLAGS
            and packet[_PLAIN_TCP_FLAGS] & (TCP_SYN | TCP_ACK) != TCP_SYN
            and not packet[IPV4_FLAGS_FRAGMENT_OFFSET] & _IPV4_FRAGMENT_HIGH_MASK
            and not packet[IPV4_FLAGS_FRAGMENT_OFFSET + 1]
        ):
            # The common case first: a segment of an open connection, unfragmented.
            return None
        upper = _upper_layer(packet)
        if isinstance(upper, Refusal):
            return upper
        proto, at, first_fragment = upper
        if proto == _LATER_FRAGMENT:
            # Its first fragment decided.
            until = self.fragments.get(_fragment_key(packet, at))
            return None if until is not None and now < until else Refusal.FRAGMENT_UNMATCHED
        verdict = self._judge_upper(packet, proto, at, now)
        if verdict is None and first_fragment is not None:
            self.fragments.remember(first_fragment, now + FRAGMENT_TIMEOUT_S)
        return verdict

    def _judge_upper(self, packet: BytesLike, proto: int, at: int, now: float) -> Refusal | None:
        length = len(packet)
        if proto == PROTO_TCP:
            if length <= at + TCP_FLAGS_OFFSET:
                return Refusal.POLICY_UNREADABLE
            if packet[at + TCP_FLAGS_OFFSET] & (TCP_SYN | TCP_ACK) != TCP_SYN:
                return None
            port = packet[at + 2] << 8 | packet[at + 3]
            return None if self.tcp.allows(port) else Refusal.POLICY_DENIED
        if proto == PROTO_UDP:
            if length < at + _PORTS_BYTES:
                return Refusal.POLICY_UNREADABLE
            ours = packet[at + 2] << 8 | packet[at + 3]
            if self.udp.allows(ours):
                return None
            theirs, ours_address = _addresses(packet)
            until = self.udp_flows.get(
                (ours_address, theirs, ours, packet[at] << 8 | packet[at + 1])
            )
            return None if until is not None and now < until else Refusal.POLICY_DENIED
        version = packet[0] >> 4
        if (version, proto) in ((IPV4_VERSION, PROTO_ICMP), (IPV6_VERSION, PROTO_ICMPV6)):
            return self._judge_icmp(packet, version, at)
        return None if self.other else Refusal.POLICY_DENIED

    def _judge_icmp(self, packet: BytesLike, version: int, at: int) -> Refusal | None:
        if len(packet) <= at:
            return Refusal.POLICY_UNREADABLE
        kind = packet[at]
        if version == IPV4_VERSION:
            echo, reply, errors = ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, _ICMP_ERRORS
        else:
            echo, reply, errors = ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY, _ICMPV6_ERRORS
        if kind == echo:
            return None if self.icmp_echo else Refusal.POLICY_DENIED
        if kind == reply:
            return None
        if kind not in errors:
            return Refusal.POLICY_DENIED
        quoted = packet[at + _ICMP_HEADER_BYTES :]
        header = IPV4_MIN_HEADER_BYTES if version == IPV4_VERSION else IPV6_HEADER_BYTES
        if len(quoted) < header or quoted[0] >> 4 != version:
            return Refusal.POLICY_UNREADABLE
        theirs, ours = _addresses(packet)
        return None if _addresses(quoted) == (ours, theirs) else Refusal.POLICY_DENIED

    def passes_rows(self, plaintexts: memoryview, count: int, row_bytes: int) -> bool:
        """Whether every packet of a decrypted batch (plain IPv4 headers, one per
        `row_bytes`) passes without looking at each: unfragmented TCP segments that open
        nothing. (Strided byte copies and C-level scans: 5x what numpy views cost here.)"""
        end = count * row_bytes
        protos = plaintexts[IPV4_PROTOCOL_OFFSET:end:row_bytes].tobytes()
        flags = plaintexts[_PLAIN_TCP_FLAGS:end:row_bytes].tobytes()
        fragment_high = plaintexts[IPV4_FLAGS_FRAGMENT_OFFSET:end:row_bytes].tobytes()
        fragment_low = plaintexts[IPV4_FLAGS_FRAGMENT_OFFSET + 1 : end : row_bytes].tobytes()
        return (
            protos.count(PROTO_TCP) == count
            and _OPENS not in flags.translate(_SYN_ONLY)
            and _OPENS not in fragment_high.translate(_FRAGMENTED)
            and fragment_low.count(0) == count
        )


def _addresses(packet: BytesLike) -> tuple[bytes, bytes]:
    """Source and destination of an IPv4 or IPv6 header (at least its fixed length)."""
    if packet[0] >> 4 == IPV4_VERSION:
        return bytes(packet[IPV4_SOURCE]), bytes(packet[IPV4_DESTINATION])
    return bytes(packet[IPV6_SOURCE]), bytes(packet[IPV6_DESTINATION])


def _fragment_key(packet: BytesLike, fragment_header: int) -> _Fragment:
    """The datagram a fragment belongs to; `fragment_header` is where an IPv6 packet's
    Fragment header starts (unused for IPv4)."""
    source, destination = _addresses(packet)
    if packet[0] >> 4 == IPV4_VERSION:
        identification = packet[IPV4_ID_OFFSET : IPV4_ID_OFFSET + _IPV4_ID_BYTES]
        return source, destination, bytes(identification), packet[IPV4_PROTOCOL_OFFSET]
    identification = packet[fragment_header + 4 : fragment_header + _EXTENSION_MIN_BYTES]
    return source, destination, bytes(identification), 0


def _upper_layer(packet: BytesLike) -> tuple[int, int, _Fragment | None] | Refusal:
    """The upper-layer protocol of a well-formed IP packet, where its header starts and,
    for a first fragment (more to come), its datagram; for a later fragment
    _LATER_FRAGMENT and where its Fragment header starts (IPv6); or why the packet cannot
    be read."""
    if packet[0] >> 4 == IPV4_VERSION:
        header = (packet[0] & 0x0F) * 4
        fragment = packet[IPV4_FLAGS_FRAGMENT_OFFSET] << 8 | packet[IPV4_FLAGS_FRAGMENT_OFFSET + 1]
        if fragment & _IPV4_FRAGMENT_OFFSET_MASK:
            return _LATER_FRAGMENT, header, None
        first = _fragment_key(packet, header) if fragment & _IPV4_MORE_FRAGMENTS else None
        return packet[IPV4_PROTOCOL_OFFSET], header, first
    at = IPV6_HEADER_BYTES
    proto = packet[IPV6_NEXT_HEADER_OFFSET]
    length = len(packet)
    walked = 0
    fragmented = False
    first_fragment: _Fragment | None = None
    while proto in _IPV6_EXTENSIONS:
        walked += 1
        if (
            walked > MAX_IPV6_EXTENSION_HEADERS
            or at - IPV6_HEADER_BYTES > MAX_IPV6_HEADER_CHAIN_BYTES
            or length < at + _EXTENSION_MIN_BYTES
        ):
            return Refusal.POLICY_UNREADABLE
        if proto == _FRAGMENT:
            if fragmented:
                return Refusal.POLICY_UNREADABLE
            fragmented = True
            field = packet[at + 2] << 8 | packet[at + 3]
            if field >> _FRAGMENT_OFFSET_SHIFT:
                return _LATER_FRAGMENT, at, None
            if field & _FRAGMENT_MORE:
                first_fragment = _fragment_key(packet, at)
            size = _EXTENSION_MIN_BYTES
        elif proto == _AUTHENTICATION:
            size = (packet[at + 1] + _AH_EXTRA_UNITS) * _AH_UNIT_BYTES
        else:
            size = (packet[at + 1] + 1) * _EXTENSION_UNIT_BYTES
        proto = packet[at]
        at += size
    if at > length or at - IPV6_HEADER_BYTES > MAX_IPV6_HEADER_CHAIN_BYTES:
        return Refusal.POLICY_UNREADABLE
    return proto, at, first_fragment
