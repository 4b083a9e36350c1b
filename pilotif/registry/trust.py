"""The trust ops (`trust_request`, `trust_respond`, `untrust`) and `connect`, the hole
punch: the registry tells both nodes each other's candidates at one moment. A trust
that changes is pushed to both nodes, and the relays of every replica forget what they
knew of the pair."""

from typing import Any, Final

from pilotif.registry.directory import Directory
from pilotif.registry.requests import Handler, Push, Refused, Request, json_size
from pilotif.registry.routes import TrustedRoutes
from pilotif.registry.store import NodeRecord
from pilotif.util.logs import log_event

MAX_TRUST_MESSAGE_BYTES: Final = 256
"""Longest trust message, as JSON-encoded UTF-8, so that every push fits a datagram."""


class TrustOps:
    """See the module docstring."""

    def __init__(self, directory: Directory, routes: TrustedRoutes) -> None:
        self._directory = directory
        self._store = directory.store
        self._routes = routes

    def handlers(self) -> dict[str, Handler]:
        """The ops this class answers."""
        return {
            "trust_request": self.trust_request,
            "trust_respond": self.trust_respond,
            "untrust": self.untrust,
            "connect": self.connect,
        }

    def trust_request(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """Ask the peer for trust (trusted at once if it asked too)."""
        peer = self._directory.peer(request)
        text = request.message.get("message", "")
        if not isinstance(text, str):
            raise Refused("bad_request", "message must be a string")
        if json_size(text) > MAX_TRUST_MESSAGE_BYTES:
            raise Refused(
                "message_too_long",
                "the trust message is too long",
                f"keep it under {MAX_TRUST_MESSAGE_BYTES} bytes",
            )
        outcome = self._store.request_trust(request.sender, peer.public_key, text, request.now)
        if outcome.changed:
            self._changed(node, peer, True, request.now, request.pushes)
        elif outcome.state == "pending":
            log_event("trust_requested", source=node.hostname, target=peer.hostname)
            push = {
                "op": "trust_requested",
                "node": self._directory.describe(node, request.now),
                "message": text,
            }
            self._directory.push(peer.public_key, push, request.now, request.pushes)
        return {"state": outcome.state}

    def trust_respond(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """Approve or reject the peer's request."""
        peer = self._directory.peer(request)
        approve = request.message.get("approve")
        if not isinstance(approve, bool):
            raise Refused("bad_request", "approve must be true or false")
        outcome = self._store.respond(request.sender, peer.public_key, approve, request.now)
        if outcome.changed:
            self._changed(node, peer, True, request.now, request.pushes)
        elif not approve:
            log_event("trust_rejected", source=peer.hostname, target=node.hostname)
        return {"state": outcome.state}

    def untrust(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """End the trust with the peer (and requests either way)."""
        peer = self._directory.peer(request)
        outcome = self._store.untrust(request.sender, peer.public_key)
        if outcome.changed:
            self._changed(node, peer, False, request.now, request.pushes)
        return {"state": outcome.state}

    def _changed(
        self, node: NodeRecord, peer: NodeRecord, trusted: bool, now: float, out: list[Push]
    ) -> None:
        self._routes.trust_changed(node.public_key, peer.public_key)
        self._directory.replicas.trust_changed(node.public_key, peer.public_key, now)
        log_event(
            "trust_established" if trusted else "trust_revoked",
            node=node.hostname,
            peer=peer.hostname,
        )
        for one, other in ((node, peer), (peer, node)):
            described = self._directory.describe(other, now)
            push = {"op": "trust_changed", "node": described, "trusted": trusted}
            self._directory.push(one.public_key, push, now, out)

    def connect(self, request: Request, node: NodeRecord) -> dict[str, Any]:
        """Tell both nodes to punch towards each other's candidates."""
        peer = self._directory.peer(request)
        now = request.now
        if not self._store.is_trusted(node.public_key, peer.public_key):
            raise Refused(
                "not_trusted",
                f"you and {peer.hostname} do not trust each other",
                f"pilotif handshake {peer.hostname}, then wait for the approval",
            )
        if not self._directory.reachable(peer, now):
            raise Refused("peer_offline", f"{peer.hostname} is offline")
        presence = self._directory.presence
        if not presence.online(node.public_key, now):
            raise Refused("not_online", "this node has not registered in a while", "retry")
        # Both sides should open their NATs at one moment: the one nearer to us waits
        # for the punch to reach the other (half of each side's reported round trip).
        one_way_ms = {key: presence.one_way_ms(key) for key in (node.public_key, peer.public_key)}
        latest_ms = max(one_way_ms.values())
        for one, other in ((node, peer), (peer, node)):
            push = {
                "op": "punch",
                "node": self._directory.describe(other, now),
                "candidates": self._directory.candidates(other),
                "delay_ms": round(latest_ms - one_way_ms[one.public_key]),
            }
            self._directory.push(one.public_key, push, now, request.pushes)
        return {}
