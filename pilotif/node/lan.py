"""The node's LAN candidates: its own IPv4 and IPv6 addresses with the UDP port, so that
two nodes on one LAN can reach each other without leaving it, and two nodes with global
IPv6 addresses (no NAT, at most a stateful firewall) can punch to each other directly.
Where pyroute2 cannot be imported (a userspace node off Linux, or without it), the
addresses come from portable calls instead (pilotif.net.host_addresses)."""

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from pilotif.control.wire import format_endpoint
from pilotif.net.host_addresses import host_addresses

IFA_F_DADFAILED: Final = 0x08
IFA_F_DEPRECATED: Final = 0x20
IFA_F_TENTATIVE: Final = 0x40
"""An IPv6 address with one of these flags sends nothing (yet, or any more): never a
candidate (linux/if_addr.h)."""
_UNUSABLE_FLAGS: Final = IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE


def usable_address(text: str, flags: int) -> IPv4Address | IPv6Address | None:
    """The address if a peer could reach us there: not loopback, link-local, multicast
    or unspecified, nor an IPv6 address still in (or failed) duplicate detection or
    deprecated."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or (address.version == 6 and flags & _UNUSABLE_FLAGS)
    ):
        return None
    return address


def candidate_order(addresses: Iterable[IPv4Address | IPv6Address], port: int) -> list[str]:
    """'ip:port' for each address, the first of each family first (the registry keeps
    only the first few: a host with many IPv4 bridges still reports its IPv6), global
    IPv6 before the rest of IPv6; each once."""
    ordered = sorted(dict.fromkeys(addresses), key=lambda a: a.version == 6 and not a.is_global)
    firsts = [a for a in (next((a for a in ordered if a.version == v), None) for v in (4, 6)) if a]
    rest = [a for a in ordered if a not in firsts]
    return [format_endpoint((str(a), port)) for a in firsts + rest]


def local_endpoints(port: int, overlay_interface: str) -> list[str]:
    """'ip:port' for every usable IPv4 and IPv6 address of this network namespace, but
    the overlay interface's own (in `candidate_order`)."""
    found: list[IPv4Address | IPv6Address] = []
    try:
        from pyroute2 import IPRoute
    except ImportError:  # no netlink: no overlay interface either (a userspace node)
        portable = (usable_address(text, 0) for text in host_addresses())
        return candidate_order([a for a in portable if a is not None], port)
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for family in (socket.AF_INET, socket.AF_INET6):
            for entry in ipr.get_addr(family=family):
                if names.get(entry["index"]) == overlay_interface:
                    continue
                flags = entry.get_attr("IFA_FLAGS") or entry["flags"]
                address = usable_address(entry.get_attr("IFA_ADDRESS") or "", int(flags))
                if address is not None:
                    found.append(address)
    return candidate_order(found, port)
