"""Events the overlay core reports to its I/O shell (the daemon logs each as one line),
and the `Output` that carries them out with the datagrams and packets."""

from dataclasses import dataclass

from pilotif.packet.ip import BytesLike

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


@dataclass(frozen=True)
class PathProbeAcked:
    """The peer answered our path MTU probe `probe_id` of `size` plaintext bytes: a
    datagram that large reaches it (pilotif.wg.path_mtu)."""

    public_key: bytes
    probe_id: int
    size: int


Event = HandshakeCompleted | HandshakeGaveUp | EndpointChanged | KeysZeroed | PathProbeAcked


@dataclass(slots=True)
class Output:
    """What the device produced since the last `Device.take_output()`: the one way out.
    Not frozen: one is made per flush, and a frozen dataclass's __init__ costs three
    times as much; its fields are never rebound, only the lists filled.

    The views in it point into the buffers the caller lent the inputs (`sealed`,
    `plaintexts`): use them before lending those again."""

    datagrams: list[tuple[BytesLike, PeerEndpoint]]
    """Datagrams for the Bind, each with the endpoint to send it to, in order."""
    trains: list[tuple[memoryview, int, PeerEndpoint]]
    """Sealed GSO trains: datagrams back to back, all of the given size but the last, for
    one endpoint; sent after `datagrams`."""
    packets: list[BytesLike]
    """Decrypted IP packets for the local stack, in order."""
    merged: list[bytes]
    """Writes for a local stack that merges (`Device.merges_for_tun`): each a virtio
    header and the TCP super-packet merged from one decrypted batch."""
    events: list[Event]
    """What happened, in order."""

    def __bool__(self) -> bool:
        return bool(self.datagrams or self.trains or self.packets or self.merged or self.events)
