"""This host's own addresses from portable calls only (no netlink, no ioctl), for where
pyroute2 cannot be imported: a userspace node on macOS, or one without pyroute2.

For each family, the source address the routing table picks toward a public destination
(a UDP socket `connect`ed there: UDP's connect sends nothing), and the addresses the host's
name resolves to. That finds the address a host on the same LAN reaches us at, though not
every address of every interface as rtnetlink lists them (pilotif.node.lan).
"""

import contextlib
import socket
from typing import Final

ROUTE_PROBES: Final = (
    (socket.AF_INET, "192.0.2.1"),
    (socket.AF_INET6, "2001:db8::1"),
)
"""Documentation addresses (RFC 5737, RFC 3849): routed by the default route like any
public address, and never sent to (connect only asks the routing table)."""
_DISCARD_PORT: Final = 9
_UNSPECIFIED: Final = frozenset({"0.0.0.0", "::"})


def route_source(destination: str, port: int = _DISCARD_PORT) -> str | None:
    """The address this host sends from towards `destination` (an IP address), as its
    routing table picks it; None without a route. Nothing is sent: UDP's connect only
    asks the routing table."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, port))
            return str(probe.getsockname()[0])
    except OSError:
        return None


def host_addresses() -> list[str]:
    """This host's addresses as text, each once: the routing table's sources first, then
    those of the host's name (they may include loopback and link-local: the caller
    filters)."""
    found = [s for _, d in ROUTE_PROBES if (s := route_source(d)) is not None]
    with contextlib.suppress(OSError):
        for *_, address in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_DGRAM):
            found.append(str(address[0]))
    return [address for address in dict.fromkeys(found) if address not in _UNSPECIFIED]
