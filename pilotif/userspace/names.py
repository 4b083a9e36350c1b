"""What a userspace node's proxies may connect to: a trusted peer by name (`beta`,
`beta.pilot`) or by overlay address, resolved by the node itself (no DNS)."""

from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final, Protocol

PILOT_SUFFIX: Final = ".pilot"

Resolve = Callable[[str], IPv4Address | IPv6Address | None]
"""A host as a client names it -> the overlay address to connect to, or None."""


class NamedPeer(Protocol):
    @property
    def hostname(self) -> str: ...

    @property
    def ipv4(self) -> IPv4Address: ...

    @property
    def ipv6(self) -> IPv6Address: ...


def peer_resolver(peers: Callable[[], Iterable[NamedPeer]]) -> Resolve:
    """Resolve names and addresses among the trusted peers `peers()` returns."""

    def resolve(host: str) -> IPv4Address | IPv6Address | None:
        text = host.strip().lower().rstrip(".")
        try:
            address = ip_address(text.strip("[]"))
        except ValueError:
            name = text.removesuffix(PILOT_SUFFIX)
            found = next((p for p in peers() if p.hostname == name), None)
            return None if found is None else found.ipv4
        known = any(address in (p.ipv4, p.ipv6) for p in peers())
        return address if known else None

    return resolve


def any_address(host: str) -> IPv4Address | IPv6Address | None:
    """Numeric addresses only (a node of static peers, which has no names)."""
    try:
        return ip_address(host.strip().strip("[]"))
    except ValueError:
        return None
