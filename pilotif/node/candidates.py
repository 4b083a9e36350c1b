"""Which of a peer's candidate endpoints this node will probe, sans-IO.

A punch lists the peer's public endpoint (as the registry saw it) and the LAN endpoints
the peer reported about itself. Those are the peer's word: a trusted peer could name
127.0.0.1, a cloud's metadata address or hosts of our LAN and make this node send to
them. So a candidate is probed only if it is an ordinary unicast address: never loopback,
link-local, multicast, unspecified, reserved (255.255.255.255 too), an overlay address or
one of this node's own addresses; a non-global one (RFC 1918, ULA, CGNAT...) only when
this node has a non-global address of the same family itself (it is on such a LAN).
At most `MAX_PEER_CANDIDATES` are kept.
"""

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

from pilotif.control.wire import parse_endpoint
from pilotif.wg.events import Endpoint

MAX_PEER_CANDIDATES: Final = 8
"""The registry sends the public endpoint, the one of the other IP family (a dual-stack
peer) and at most 6 LAN ones; more is not honest."""

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def _address(text: str) -> IPAddress | None:
    try:
        address = ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _special(address: IPAddress) -> bool:
    """Never a peer's endpoint, whatever network this node is on."""
    return (
        address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or (isinstance(address, IPv6Address) and address.is_site_local)
    )


def usable_candidates(
    texts: Iterable[object], own_endpoints: Sequence[str], overlay: Sequence[Network]
) -> tuple[list[Endpoint], int]:
    """The candidates worth probing (at most MAX_PEER_CANDIDATES, without repeats), and how
    many were refused. `own_endpoints` are this node's LAN endpoints ('ip:port'), `overlay`
    the overlay's prefixes."""
    own = [a for a in (_address(t.rpartition(":")[0].strip("[]")) for t in own_endpoints) if a]
    on_lan = {a.version for a in own if not a.is_global}
    usable: list[Endpoint] = []
    refused = 0
    for text in texts:
        try:
            host, port = parse_endpoint(str(text))
        except ValueError:
            refused += 1
            continue
        address = _address(host)
        if (
            address is None
            or _special(address)
            or address in own
            or any(address in network for network in overlay)
            or (not address.is_global and address.version not in on_lan)
            or len(usable) == MAX_PEER_CANDIDATES
        ):
            refused += 1
            continue
        endpoint = (str(address), port)
        if endpoint not in usable:
            usable.append(endpoint)
    return usable, refused
