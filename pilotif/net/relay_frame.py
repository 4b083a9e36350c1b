"""The relay datagram, one of the Bind's transports: a WireGuard datagram for a peer reached
through a relay (or the registry) travels as `0x51 0 0 0 | peer key | inner datagram`.

`RelayFraming` is that transport's logic without sockets: where relayed datagrams go (the
home relay, else the registry replica we talk to) and the sorting of what arrives from a
registry or relay address (control messages for the node, WireGuard datagrams for the
device, punch openers dropped). The rest of the control wire format (sealed 0x50
messages, key requests, cookies) is control/wire.py's; docs/CONTROL_PROTOCOL.md is the
contract. Parsers of peer input raise WireError only, with a short `reason` that the
receiver counts.
"""

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from pilotif.packet.ip import BytesLike
from pilotif.wg.crypto import KEY_SIZE
from pilotif.wg.events import Endpoint, PeerEndpoint, RelayEndpoint
from pilotif.wg.messages import split_coalesced

CONTROL_TYPE: Final = 0x50
"""The lowest type byte that is not WireGuard's (1-4): the registry's and relays' own."""
RELAY_TYPE: Final = 0x51
PUNCH_OPENER_TYPE: Final = 0x53
PUNCH_OPENER: Final = bytes((PUNCH_OPENER_TYPE, 0, 0, 0))
"""What a node sends to each of a peer's candidates the moment a punch arrives, before
any session exists: it opens our NAT's mapping towards the peer at the same moment the
peer opens its own, so neither side's first probe meets a NAT with no mapping (a router
that takes such a packet for itself then blocks that port towards the peer). The
receiver drops it and counts it."""
RELAY_HEADER_SIZE: Final = 36
RESERVED: Final = slice(1, 4)
"""The three bytes after the type byte of every control-plane message: zeros."""
RESERVED_ZEROS: Final = bytes(3)

_RELAY_HEADER: Final = struct.Struct("<B3x32s")

assert _RELAY_HEADER.size == RELAY_HEADER_SIZE


class WireError(ValueError):
    """A datagram from the network that we refuse; `reason` names why, for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail or reason


def pack_relay(peer_public: bytes, inner: BytesLike) -> bytes:
    """`0x51 0 0 0 | peer key | inner datagram`."""
    if len(peer_public) != KEY_SIZE:
        raise ValueError("a public key is 32 bytes")
    return _RELAY_HEADER.pack(RELAY_TYPE, peer_public) + inner


def unpack_relay(datagram: bytes) -> tuple[bytes, bytes]:
    """The peer key and the inner datagram of a relay message; WireError if malformed."""
    if len(datagram) <= RELAY_HEADER_SIZE:
        raise WireError("malformed", "relay message without a datagram")
    if datagram[0] != RELAY_TYPE or datagram[RESERVED] != RESERVED_ZEROS:
        raise WireError("malformed", "not a relay message")
    return bytes(datagram[4:RELAY_HEADER_SIZE]), bytes(datagram[RELAY_HEADER_SIZE:])


@dataclass
class FromRegistry:
    """What one receive from a registry address held, sorted by who takes it."""

    control: list[bytes] = field(default_factory=list)
    """Control messages and key answers (0x50, 0x52): for the node core."""
    wireguard: list[tuple[bytes, PeerEndpoint]] = field(default_factory=list)
    """WireGuard datagrams, with where they came from (the relay, for a peer): for the
    device."""


class RelayFraming:
    """The Bind's logic without sockets: relay framing and sorting what arrives.

    Relayed datagrams go to the home relay (`use_relays`), else to `registry`: the first
    of `registries` (none for a daemon without a registry), whose replicas are where
    control messages come from (`use_registry` moves to another). `counters` counts
    relayed bytes each way, punch openers, and relay messages dropped as malformed.
    """

    def __init__(self, registries: tuple[Endpoint, ...]) -> None:
        self.registry = registries[0] if registries else None
        self.registries = set(registries)
        self.relay: Endpoint | None = None
        self.relays: set[Endpoint] = set()
        self.counters: Counter[str] = Counter()

    def use_registry(self, endpoint: Endpoint) -> None:
        """Relay through the replica at `endpoint` from now on (when no relay is home)."""
        self.registry = endpoint

    def use_relays(self, home: Endpoint | None, relays: set[Endpoint]) -> None:
        """Relay through `home` (None: the registry); take datagrams from all `relays`."""
        self.relay = home
        self.relays = relays

    def wrap(self, datagram: BytesLike, endpoint: RelayEndpoint) -> tuple[bytes, Endpoint] | None:
        """The datagram for the relay that carries `datagram` to a relayed peer."""
        through = self.relay or self.registry
        if through is None:
            return None
        self.counters["relay_tx_bytes"] += len(datagram)
        return pack_relay(endpoint.peer, datagram), through

    def is_opener(self, buffer: memoryview) -> bool:
        """Whether a receive is a peer's punch opener (counted, then dropped)."""
        if len(buffer) == len(PUNCH_OPENER) and buffer == PUNCH_OPENER:
            self.counters["punch_openers"] += 1
            return True
        return False

    def is_registry(self, source: Endpoint) -> bool:
        """Whether datagrams from `source` need `split_registry` rather than the device."""
        return source in self.registries or source in self.relays

    def split_registry(
        self, buffer: memoryview, segment_size: int, source: Endpoint
    ) -> FromRegistry:
        """Sort the datagrams of one receive from a registry or relay address (`source`)."""
        sorted_ = FromRegistry()
        for view in split_coalesced(buffer, segment_size):
            data = bytes(view)
            if not data:
                continue
            if data[0] < CONTROL_TYPE:
                sorted_.wireguard.append((data, source))
            elif data[0] != RELAY_TYPE:
                sorted_.control.append(data)
            else:
                try:
                    peer, inner = unpack_relay(data)
                except WireError:
                    self.counters["relay_malformed"] += 1
                    continue
                self.counters["relay_rx_bytes"] += len(inner)
                sorted_.wireguard.append((inner, RelayEndpoint(peer)))
        return sorted_
