"""The relay datagram, one of the Bind's transports: a WireGuard datagram for a peer reached
through a relay (or the registry) travels as `0x51 0 0 0 | peer key | inner datagram`.

Also the type bytes the Bind sorts arrivals by: below CONTROL_TYPE is WireGuard's, a punch
opener is dropped. The rest of the control wire format (sealed 0x50 messages, key
requests, cookies) is control/wire.py's; docs/CONTROL_PROTOCOL.md is the contract. Parsers
of peer input raise WireError only, with a short `reason` that the receiver counts.
"""

import struct
from typing import Final

from pilotif.wg.crypto import KEY_SIZE, BytesLike

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
