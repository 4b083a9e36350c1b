"""Events the overlay core reports to its I/O shell; the daemon logs each as one line."""

from dataclasses import dataclass

Endpoint = tuple[str, int]
"""A UDP endpoint as (host, port); host is an IPv4 or IPv6 address literal."""


@dataclass(frozen=True, slots=True)
class RelayEndpoint:
    """A peer reached through the registry's relay rather than at a UDP address.

    Datagrams sent here go to the relay, wrapped for `peer`; datagrams the relay
    forwarded from `peer` arrive from here. The Bind does the wrapping.
    """

    peer: bytes
    """The static public key of the peer on the other side of the relay."""


PeerEndpoint = Endpoint | RelayEndpoint
"""Where a peer's datagrams go and come from: a UDP address or the relay."""


@dataclass(frozen=True)
class HandshakeCompleted:
    """A new session with a peer is ready to carry data."""

    public_key: bytes
    """The peer's static public key."""
    initiator: bool
    """True when we initiated the handshake."""


@dataclass(frozen=True)
class HandshakeGaveUp:
    """No response to our initiations for REKEY_ATTEMPT_TIME_S; queued packets are dropped."""

    public_key: bytes
    """The peer's static public key."""


@dataclass(frozen=True)
class EndpointChanged:
    """An authenticated packet arrived from a new address: the peer roamed."""

    public_key: bytes
    """The peer's static public key."""
    endpoint: PeerEndpoint
    """The address its latest authenticated packet came from."""


@dataclass(frozen=True)
class KeysZeroed:
    """All session keys of a peer were erased after REJECT_AFTER_TIME_S * 3 of silence."""

    public_key: bytes
    """The peer's static public key."""


Event = HandshakeCompleted | HandshakeGaveUp | EndpointChanged | KeysZeroed
