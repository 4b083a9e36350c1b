"""A trusted peer as the node knows it: the identity the registry vouched for and this
node pinned (name, key, addresses, tags). Where its path stands is the path manager's
(`pilotif.node.path_manager`)."""

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address


@dataclass
class TrustedPeer:
    """What the node knows of a peer it trusts."""

    hostname: str
    public_key: bytes
    ipv4: IPv4Address
    ipv6: IPv6Address
    tags: list[str]
    """The tags it gave itself (labels for `find`)."""
    granted_tags: list[str] = field(default_factory=list)
    """The tags the registry's operator granted it (what policies and auto-approval match)."""
    network_name: str | None = None
