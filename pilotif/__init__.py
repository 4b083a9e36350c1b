"""pilotif: a permanent virtual IP for every agent, over the WireGuard protocol."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`pilotif.Node` (pilotif.embedded) and the `pilotif.UdpEndpoint` its `open_udp`
    gives, imported on first use: the CLI does not pay for them."""
    if name == "Node":
        from pilotif.embedded import Node

        return Node
    if name == "UdpEndpoint":
        from pilotif.userspace.udp import UdpEndpoint

        return UdpEndpoint
    raise AttributeError(f"module 'pilotif' has no attribute {name!r}")
