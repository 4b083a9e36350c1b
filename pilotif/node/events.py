"""Events the node core reports to its adapter: what happened on the registry link, to
trust, to peers and to their paths. The daemon logs each as one line and publishes some
to `pilotif events` (its table `EVENT_ROUTES` says which)."""

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any


@dataclass(frozen=True)
class RegistryKeyPinned:
    """First contact: the registry told us its key, and we pinned it."""

    key: bytes
    """The registry's public key."""


@dataclass(frozen=True)
class Joined:
    """The first registration succeeded: the node has its address."""

    ipv4: IPv4Address
    """The node's permanent virtual IPv4 address."""
    network: IPv4Network
    """The registry's overlay network."""
    public_endpoint: str | None
    """Our endpoint as the registry saw it (`ip:port`)."""


@dataclass(frozen=True)
class StartedWithoutRegistry:
    """The registry did not answer at start: the node runs on what it kept (its address
    and trusted peers) and keeps registering in the background."""

    ipv4: IPv4Address
    peers: int
    """How many cached peers it added again."""
    relays: int = 0
    """How many standalone relays it kept (it attaches to them again)."""
    tickets: int = 0
    """The unexpired tickets it kept for its home relay (presented there if it is home
    again)."""


@dataclass(frozen=True)
class JoinFailed:
    """`up` cannot join: the registry refused, never answered, or has another key."""

    code: str
    """A short name of the failure (`unreachable`, `name_taken`, `registry_key_changed`)."""
    error: str
    """What happened, for a person."""
    hint: str
    """What to do about it."""


@dataclass(frozen=True)
class RegistryLost:
    """A heartbeat got no answer: the registry is unreachable for now."""

    error: str
    """What failed."""


@dataclass(frozen=True)
class RegistryKeyRefused:
    """The registry at our address answers with another key than the one we pinned (its
    state was lost, or it is another registry): we do not talk to it."""

    key: bytes
    """The key it has now."""
    error: str
    hint: str
    """What its operator, or this node's, does about it."""


@dataclass(frozen=True)
class RegistrySwitched:
    """The registry replica we talked to went silent: we talk to another one now (our
    address, name and trust are the registry's, whichever replica answers)."""

    registry: str
    previous: str


@dataclass(frozen=True)
class RelaysChanged:
    """The standalone relays the registry names, or the one we use (our home: the nearest
    that answers), changed. Relayed datagrams leave through `home` (None: through the
    registry) and may arrive from any of `relays`."""

    home: str | None
    relays: str
    """`ip:port` of each, comma-separated."""


@dataclass(frozen=True)
class RelayTicketsTaken:
    """Our home relay took our tickets (from the registry, or those the node kept): the
    node cache keeps them."""

    relay: str
    tickets: int


@dataclass(frozen=True)
class RegistryRegained:
    """The registry answers again after RegistryLost."""


@dataclass(frozen=True)
class PublicEndpointChanged:
    """The registry sees us at another public endpoint though nothing changed on this
    host (our router got a new address, or lost its mapping): every peer is punched
    again."""

    old: str | None
    new: str | None


@dataclass(frozen=True)
class RequestDone:
    """A request made with `NodeCore.call` got its reply."""

    request_id: int
    """The id `call` returned."""
    reply: dict[str, Any]
    """The registry's reply (`ok` is true)."""


@dataclass(frozen=True)
class RequestFailed:
    """A request made with `NodeCore.call` was refused or never answered."""

    request_id: int
    """The id `call` returned."""
    code: str
    """The registry's error code, or `unreachable`."""
    error: str
    """What happened, for a person."""
    hint: str
    """What to do about it."""


@dataclass(frozen=True)
class TrustRequested:
    """Someone asks us for trust."""

    peer: str
    """Their hostname."""
    public_key: bytes
    """Their key."""
    message: str
    """What they wrote with the request."""


@dataclass(frozen=True)
class TrustApproved:
    """The registry says a trust we asked for or approved is established."""

    peer: str
    """The peer's hostname."""
    public_key: bytes
    """The peer's key."""


@dataclass(frozen=True)
class TrustRevoked:
    """A trust ended (either side untrusted)."""

    peer: str
    """The peer's hostname."""
    public_key: bytes
    """The peer's key."""


@dataclass(frozen=True)
class PeerRefused:
    """The registry offered a peer that this node will not add."""

    peer: str
    """The hostname the registry gave."""
    public_key: bytes
    """The key the registry gave."""
    reason: str
    """Why: not asked for or approved here, a key other than the pinned one, an address
    outside the network or taken by another peer."""


@dataclass(frozen=True)
class PeerAdded:
    """A trusted peer became a WireGuard peer of the device."""

    peer: str
    """Its hostname."""
    public_key: bytes
    """Its key."""
    ipv4: IPv4Address
    """Its virtual IPv4 address."""


@dataclass(frozen=True)
class PeerRemoved:
    """A peer left the device."""

    peer: str
    """Its hostname."""
    public_key: bytes
    """Its key."""
    reason: str
    """Why (`trust revoked`, `untrusted here`, `no longer trusted`)."""


@dataclass(frozen=True)
class PathChanged:
    """The path to a peer moved between the relay and a direct endpoint."""

    peer: str
    """Its hostname."""
    public_key: bytes
    """Its key."""
    path: str
    """`direct` or `relay`."""
    endpoint: str | None
    """The direct endpoint (`ip:port`), None on the relay."""
    reason: str
    """What moved it."""


@dataclass(frozen=True)
class PathMtuChanged:
    """The largest packet that reaches a peer on its path now changed (path MTU probed)."""

    peer: str
    """Its hostname."""
    public_key: bytes
    """Its key."""
    mtu: int
    """The largest packet (bytes) it is sent from now on."""


@dataclass(frozen=True)
class RequestError:
    """A request the node made on its own (connect, auto-approve) failed."""

    op: str
    """The request's op."""
    error: str
    """What failed."""


@dataclass(frozen=True)
class TrustSynced:
    """The trust list was fetched and the device's peers match it."""


@dataclass(frozen=True)
class TrustStateChanged:
    """Pins or consents changed: the adapter writes them to the state dir."""


NodeEvent = (
    RegistryKeyPinned
    | Joined
    | StartedWithoutRegistry
    | JoinFailed
    | RegistryLost
    | RegistryKeyRefused
    | RegistryRegained
    | RegistrySwitched
    | RelaysChanged
    | RelayTicketsTaken
    | PublicEndpointChanged
    | RequestDone
    | RequestFailed
    | TrustRequested
    | TrustApproved
    | TrustRevoked
    | PeerRefused
    | PeerAdded
    | PeerRemoved
    | PathChanged
    | PathMtuChanged
    | RequestError
    | TrustSynced
    | TrustStateChanged
)


@dataclass
class EventSink:
    """The node's events in the order its parts report them (the node core's `events`
    is `items`: whoever drains it takes the list and leaves a new one)."""

    items: list[NodeEvent] = field(default_factory=list)
