"""A trusted peer as the node knows it: the identity the registry vouched for and this
node pinned (name, key, addresses, tags); finding one, naming them all, and why the
registry's offer of one is refused. Where its path stands is the path manager's
(`pilotif.node.path_manager`)."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Any

from pilotif.control.identity import HostnameError, normalize_hostname
from pilotif.node.trust import TrustRecord
from pilotif.wg.keys import encode_key


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


def find_peer(peers: Iterable[TrustedPeer], text: str) -> TrustedPeer | None:
    """A trusted peer by hostname (with or without .pilot), virtual IP or key."""
    text = text.strip()
    name = text.lower().removesuffix(".pilot")
    for peer in peers:
        if text == encode_key(peer.public_key) or name in (
            peer.hostname,
            str(peer.ipv4),
            str(peer.ipv6),
        ):
            return peer
    return None


def peer_names(peers: Iterable[TrustedPeer]) -> dict[str, tuple[IPv4Address, IPv6Address]]:
    """Hostname -> addresses of every trusted peer, for the DNS responder."""
    return {p.hostname: (p.ipv4, p.ipv6) for p in peers}


def refusal_of(
    node: dict[str, Any],
    key: bytes,
    trust: TrustRecord,
    network: IPv4Network | None,
    own: IPv4Address | None,
    peers: Iterable[TrustedPeer],
) -> str | None:
    """Why the node the registry offered cannot be a peer, or None if it can: not
    consented, no valid name and address, a name pinned to another key, an address
    outside `network`, ours (`own`) or another peer's."""
    if key not in trust.consented:
        return "this node never asked for or approved that trust"
    try:
        hostname = normalize_hostname(str(node.get("hostname", "")))
        ipv4 = IPv4Address(node.get("ipv4"))
    except (HostnameError, ValueError):
        return "the registry gave no valid hostname and address"
    pinned = trust.pins.get(hostname)
    if pinned is not None and pinned != key:
        return f"{hostname} is pinned to key {encode_key(pinned)}"
    if network is None or ipv4 not in network or ipv4 == own:
        return f"{ipv4} is not a peer address of the network {network}"
    taken = [p for p in peers if p.ipv4 == ipv4 and p.public_key != key]
    if taken:
        return f"{ipv4} belongs to {taken[0].hostname}"
    return None
