"""What the registry's handlers share about nodes: the store, who is online here or at
another replica, how a node looks to the others, its candidate endpoints for punching,
the peer a request names, and the pushes (messages a node gets unasked) queued for it."""

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pilotif.control.wire import format_endpoint
from pilotif.registry.presence import Presence
from pilotif.registry.replicas import Replicas
from pilotif.registry.requests import Push, Refused, Request
from pilotif.registry.store import NodeRecord, Store
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key


class Directory:
    """See the module docstring. `sessions` are the nodes' sessions (a push goes only
    to a node whose session we know)."""

    def __init__(
        self,
        store: Store,
        presence: Presence,
        replicas: Replicas,
        sessions: Mapping[bytes, int],
        counters: Counter[str],
    ) -> None:
        self.store = store
        self.presence = presence
        self.replicas = replicas
        self._sessions = sessions
        self._counters = counters

    def reachable(self, node: NodeRecord, now: float) -> bool:
        """Online here, or at another replica that is alive."""
        return self.presence.online(node.public_key, now) or self.replicas.elsewhere(node)

    def describe(self, node: NodeRecord, now: float) -> dict[str, Any]:
        """A node as others see it; `granted_tags` and `network_name` only where it has
        them (pages hold more nodes without them)."""
        ipv4, ipv6 = node.address_texts
        described: dict[str, Any] = {
            "hostname": node.hostname,
            "public_key": encode_key(node.public_key),
            "ipv4": ipv4,
            "ipv6": ipv6,
            "tags": list(node.tags),
            "online": self.reachable(node, now),
        }
        if node.granted_tags:
            described["granted_tags"] = list(node.granted_tags)
        if node.network is not None:
            described["network_name"] = node.network
        return described

    def candidates(self, node: NodeRecord) -> list[str]:
        """Where a peer should punch to reach the node: its public endpoint, its public
        endpoint of the other IP family (a dual-stack node), then its LAN ones."""
        seen = self.presence.endpoint(node.public_key)
        if seen is not None:
            public = [format_endpoint(seen)]
        else:
            public = [node.endpoint] if node.endpoint is not None else []
        other = self.presence.other_family_endpoint(node.public_key)
        if other is not None:
            public.append(format_endpoint(other))
        return public + [lan for lan in node.lan_endpoints if lan not in public]

    def peer(self, request: Request) -> NodeRecord:
        """The node a request names in `peer` (not the sender itself)."""
        text = request.message.get("peer")
        try:
            key = decode_key(text) if isinstance(text, str) else None
        except InvalidKeyError:
            key = None
        if key is None:
            raise Refused("bad_request", "peer must be a base64 public key")
        if key == request.sender:
            raise Refused("bad_request", "that is this node's own key")
        peer = self.store.node_by_key(key)
        if peer is None:
            raise Refused("unknown_peer", "no node has this key", "pilotif find NAME")
        return peer

    def push(
        self,
        key: bytes,
        payload: dict[str, Any],
        now: float,
        out: list[Push],
        *,
        forward: bool = True,
    ) -> None:
        """Queue a message for a node online here; one online at another replica gets it
        through the database (unless `forward` is off: it came that way)."""
        seen = self.presence.endpoint(key)
        if seen is None or not self.presence.online(key, now):
            if forward:
                self.replicas.forward(key, payload, now)
            return
        if key not in self._sessions:
            # It would drop a push without its session; it syncs at its next request.
            self._counters["push_no_session"] += 1
            return
        out.append((key, payload, seen))
