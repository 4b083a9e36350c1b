"""pilotif: a permanent virtual IP for every agent, over the WireGuard protocol."""

__version__ = "0.1.0"
