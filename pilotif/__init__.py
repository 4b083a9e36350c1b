"""pilotif: a permanent virtual IP for every agent, over the WireGuard protocol."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`pilotif.Node` (pilotif.embedded), imported on first use: the CLI does not pay
    for it."""
    if name == "Node":
        from pilotif.embedded import Node

        return Node
    raise AttributeError(f"module 'pilotif' has no attribute {name!r}")
