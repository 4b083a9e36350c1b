"""The WireGuard protocol core, sans-IO: bytes and `now` in; datagrams, packets for the
TUN, events and the next timer out. No sockets, no clocks, no threads."""

from pilotif.wg.device import Device
from pilotif.wg.drops import DropReason
from pilotif.wg.events import (
    Endpoint,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
)

__all__ = [
    "Device",
    "DropReason",
    "Endpoint",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "HandshakeGaveUp",
    "KeysZeroed",
]
