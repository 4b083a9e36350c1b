"""The Linux TUN device: open it (device), configure its link over netlink (link), keep
its addresses off every other interface (guard, nftables)."""

from pilotif.tun.device import TunDevice, TunError
from pilotif.tun.link import (
    Ipv6UnavailableError,
    LinkError,
    configure_link,
    delete_link,
    limit_gso_segments,
    link_exists,
)

__all__ = [
    "Ipv6UnavailableError",
    "LinkError",
    "TunDevice",
    "TunError",
    "configure_link",
    "delete_link",
    "limit_gso_segments",
    "link_exists",
]
