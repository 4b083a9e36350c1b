"""The node's LAN candidates: its own IPv4 addresses with the UDP port, so that two
nodes on one LAN can reach each other without leaving it."""

from pyroute2 import IPRoute

_LOOPBACK_PREFIX = "127."


def local_endpoints(port: int, overlay_interface: str) -> list[str]:
    """'ip:port' for every global IPv4 address of this network namespace, except the
    loopback and the overlay interface's own."""
    endpoints = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for address in ipr.get_addr(family=2):
            ip = address.get_attr("IFA_ADDRESS")
            if not ip or ip.startswith(_LOOPBACK_PREFIX):
                continue
            if names.get(address["index"]) == overlay_interface:
                continue
            endpoints.append(f"{ip}:{port}")
    return endpoints
