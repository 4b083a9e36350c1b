"""Where the daemon's events go: every event of the overlay device and the node core
becomes one log line and, as `pilotif.daemon.event_catalogue` says, one `pilotif events`
entry.

On top of the table: `peer_up` and `peer_down` are published once each way per peer (a
session came up; the peer was removed or its keys zeroed), and `path_changed` for peers
whose path the node core does not choose itself (static peers roaming). Handshakes are
counted for the metrics.
"""

from pilotif.daemon.event_catalogue import ROUTES, event_fields
from pilotif.node.core import NodeCore
from pilotif.node.events import NodeEvent, PeerRemoved
from pilotif.observe.events import EventBus
from pilotif.util.logs import log_event
from pilotif.wg.events import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    KeysZeroed,
    RelayEndpoint,
)
from pilotif.wg.keys import encode_key


class EventPublisher:
    """Logs and publishes events; see the module docstring. `node` is the node core once
    the daemon has joined a registry (it names peers and chooses their paths)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.node: NodeCore | None = None
        self.handshakes = 0
        self._peers_up: set[str] = set()
        """Keys (base64) of peers with a session: peer_up was published, peer_down not yet."""

    def publish(self, event: Event | NodeEvent) -> None:
        """One event of either core."""
        route = ROUTES[type(event)]
        fields = event_fields(event)
        if route.log is not None:
            log_event(route.log, level=route.level, **fields)
        if isinstance(event, HandshakeCompleted):
            self.handshakes += 1
            self._peer_up(event.public_key)
        elif isinstance(event, PeerRemoved):
            self._peer_down(event.public_key, event.peer, event.reason)
        elif isinstance(event, KeysZeroed):
            self._peer_down(event.public_key, self.peer_name(event.public_key), "silent")
        elif isinstance(event, EndpointChanged) and (
            self.node is None or event.public_key not in self.node.peers
        ):
            relayed = isinstance(event.endpoint, RelayEndpoint)
            self.bus.publish(
                "path_changed",
                peer=self.peer_name(event.public_key),
                public_key=encode_key(event.public_key),
                path="relay" if relayed else "direct",
                endpoint=fields["endpoint"] if not relayed else None,
            )
        if route.publish is not None:
            self.bus.publish(route.publish, **fields)

    def peer_name(self, key: bytes) -> str:
        """The peer's hostname where the registry told us, else its key."""
        peer = self.node.peers.get(key) if self.node is not None else None
        return peer.hostname if peer is not None else encode_key(key)

    def _peer_up(self, key: bytes) -> None:
        encoded = encode_key(key)
        if encoded not in self._peers_up:
            self._peers_up.add(encoded)
            self.bus.publish("peer_up", peer=self.peer_name(key), public_key=encoded)

    def _peer_down(self, key: bytes, name: str, reason: str) -> None:
        encoded = encode_key(key)
        if encoded in self._peers_up:
            self._peers_up.discard(encoded)
            self.bus.publish("peer_down", peer=name, public_key=encoded, reason=reason)
