"""What a running interface is made of, as start-up builds it (`Parts`): the status
builder, the control requests and the event router read it; only start-up writes it."""

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

from pilotif.daemon.node_runner import NodeRunner
from pilotif.net.bind import Bind
from pilotif.wg.device import Device


@dataclass
class Parts:
    """One interface's parts; `bind`, `node` and the TUN's offloads appear as they start."""

    interface: str
    """The TUN's name (a userspace node's name for its stack)."""
    device: Device
    """The WireGuard core."""
    mtu: int
    addresses: list[IPv4Interface | IPv6Interface] = field(default_factory=list)
    """The interface's addresses (a node's come from the registry)."""
    bind: Bind | None = None
    node: NodeRunner | None = None
    """The node, for an interface joined to a registry."""
    tun_offloads: dict[str, Any] | None = None
    """Which offloads the TUN was granted, once it is open."""
    tso_max_segments: int | None = None
    """The cap on segments per TSO super-packet (one UDP GSO send), if the kernel took it."""
    userspace: Callable[[], dict[str, Any]] | None = None
    """A userspace node's status (its stack and proxies), instead of a TUN."""
