"""Standalone relays: `pilotif relay` carries WireGuard datagrams between nodes that the
registry's tickets prove trust each other, with no database."""
