"""One table for every event of the cores (overlay device and node): the log line it
becomes and the `pilotif events` kind it is published as, if any.

Fields come from the event's dataclass fields: keys as base64, addresses and endpoints
as text. `peer_up`/`peer_down` are published by `pilotif.daemon.event_publisher`, which knows
which peers are up; they are not in this table.
"""

import logging
from dataclasses import dataclass, fields
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Final

from pilotif.net.bind import endpoint_text
from pilotif.node import events as node
from pilotif.node.events import NodeEvent
from pilotif.wg.events import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
    PathProbeAcked,
    RelayEndpoint,
)
from pilotif.wg.keys import encode_key


@dataclass(frozen=True)
class Route:
    """Where one kind of event goes."""

    log: str | None
    """The log line's event name (None: not logged)."""
    publish: str | None = None
    """The `pilotif events` kind (None: not published)."""
    level: int = logging.INFO


ROUTES: Final[dict[type, Route]] = {
    HandshakeCompleted: Route("handshake_completed"),
    HandshakeGaveUp: Route("handshake_gave_up", level=logging.WARNING),
    EndpointChanged: Route("endpoint_changed"),
    KeysZeroed: Route("keys_zeroed"),
    PathProbeAcked: Route(None),
    node.RegistryKeyPinned: Route("registry_key_pinned"),
    node.Joined: Route("registered"),
    node.StartedWithoutRegistry: Route("started_without_registry", level=logging.WARNING),
    node.JoinFailed: Route("join_failed", level=logging.WARNING),
    node.RegistryLost: Route("registry_lost", "registry_lost", logging.WARNING),
    node.RegistryKeyRefused: Route("registry_key_refused", "registry_key_refused", logging.ERROR),
    node.RegistryRegained: Route("registry_regained", "registry_regained"),
    node.RegistrySwitched: Route("registry_switched", "registry_switched", logging.WARNING),
    node.RelaysChanged: Route("relays_changed", "relays_changed"),
    node.RelayTicketsTaken: Route("relay_tickets_taken", level=logging.DEBUG),
    node.PublicEndpointChanged: Route("public_endpoint_changed"),
    node.RequestDone: Route(None),
    node.RequestFailed: Route(None),
    node.RequestError: Route("request_failed", level=logging.WARNING),
    node.TrustRequested: Route("trust_requested", "trust_requested"),
    node.TrustApproved: Route("trust_established", "trust_approved"),
    node.TrustRevoked: Route("trust_revoked", "trust_revoked"),
    node.PeerRefused: Route("peer_refused", level=logging.WARNING),
    node.PeerAdded: Route("peer_added"),
    node.PeerRemoved: Route("peer_removed"),
    node.PathChanged: Route("path_changed", "path_changed"),
    node.PathMtuChanged: Route("path_mtu_changed", "path_mtu_changed"),
    node.TrustSynced: Route(None),
    node.TrustStateChanged: Route(None),
}


def event_fields(event: Event | NodeEvent) -> dict[str, object]:
    """The event's fields as text, numbers and booleans (keys in base64)."""
    out: dict[str, object] = {}
    for item in fields(event):
        value = getattr(event, item.name)
        if isinstance(value, bytes):
            value = encode_key(value)
        elif isinstance(value, (tuple, RelayEndpoint)):
            value = endpoint_text(value)
        elif isinstance(value, (IPv4Address, IPv6Address, IPv4Network)):
            value = str(value)
        out[item.name] = value
    return out
