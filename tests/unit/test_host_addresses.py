"""pilotif.net.host_addresses: this host's addresses without netlink, checked against what
rtnetlink (pyroute2) lists for the same host."""

import socket
from ipaddress import ip_address

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pilotif.net import host_addresses as module
from pilotif.net.host_addresses import host_addresses


def _netlink_addresses() -> set[str]:
    with IPRoute() as ipr:
        return {
            str(ip_address(entry.get_attr("IFA_ADDRESS")))
            for family in (socket.AF_INET, socket.AF_INET6)
            for entry in ipr.get_addr(family=family)
        }


def _default_route_sources() -> set[str]:
    """The address each family's default route sends from, as the kernel picks it."""
    sources = set()
    with IPRoute() as ipr:
        for family, destination in module.ROUTE_PROBES:
            try:
                routes = ipr.route("get", dst=destination, family=family)
            except NetlinkError:  # no route for that family
                continue
            sources |= {str(route.get_attr("RTA_PREFSRC")) for route in routes}
    return sources - {"None"}


def test_every_address_found_is_one_of_this_hosts_and_the_default_routes_source_is_there() -> None:
    found = host_addresses()
    assert len(found) == len(set(found))
    assert set(found) <= _netlink_addresses()
    assert _default_route_sources() <= set(found)
    assert "0.0.0.0" not in found and "::" not in found


def test_without_a_route_or_a_resolvable_name_nothing_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreachable(self: socket.socket, address: object) -> None:
        raise OSError("Network is unreachable")

    def unknown(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    assert host_addresses() == []
