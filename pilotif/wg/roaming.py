"""Roaming: which authenticated sources move a peer's endpoint.

Plain WireGuard lets every authenticated packet move it; whoever chooses the peer's
paths (the node) may narrow that per peer with a `Roaming`. Each move is reported as
EndpointChanged: the device never calls back."""

from dataclasses import dataclass

from pilotif.wg.events import EndpointChanged, PeerEndpoint, RelayEndpoint
from pilotif.wg.outbox import Outbox
from pilotif.wg.peer import Peer


@dataclass(frozen=True)
class Roaming:
    """Which authenticated sources may move a peer's endpoint, as whoever chooses the
    peer's paths (the node) sets it with `Device.set_roaming`; the device applies it and
    reports each move (EndpointChanged): it never calls back."""

    to_udp: bool
    """A UDP address may take the endpoint."""
    to_relay_after_s: float | None
    """The peer's own relay endpoint may take it with a handshake initiation, or when
    nothing arrived on the current endpoint for longer than this; None: never (a relay
    endpoint of another peer never does)."""


class Roamer:
    """The peers' `Roaming` rules, applied to authenticated packets."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._rules: dict[bytes, Roaming] = {}
        """Peer key -> which sources may move its endpoint."""

    def set(self, public_key: bytes, roaming: Roaming | None) -> None:
        """The rule for a peer from now on (None: every source, plain WireGuard)."""
        if roaming is None:
            self._rules.pop(public_key, None)
        else:
            self._rules[public_key] = roaming

    def authenticated_from(
        self,
        peer: Peer,
        source: PeerEndpoint,
        now: float,
        *,
        answered: bool,
        initiation: bool = False,
    ) -> None:
        """An authenticated packet arrived: the endpoint roams to its source (unless the
        peer's `Roaming` keeps it). Data or a handshake response on the current path
        answers what we sent; a keepalive or an initiation proves only the way towards us."""
        if peer.endpoint != source and (
            peer.endpoint is None or self._may_roam(peer, source, now, initiation)
        ):
            peer.endpoint = source
            self._outbox.out.events.append(EndpointChanged(peer.public_key, source))
        if source == peer.endpoint:
            peer.last_received_s = now
            if answered:
                peer.unanswered_since_s = None

    def _may_roam(self, peer: Peer, source: PeerEndpoint, now: float, initiation: bool) -> bool:
        """Whether the peer's `Roaming` lets an authenticated packet from `source` (a
        handshake initiation, or not) take its endpoint."""
        roaming = self._rules.get(peer.public_key)
        if roaming is None:
            return True
        if not isinstance(source, RelayEndpoint):
            return roaming.to_udp
        if roaming.to_relay_after_s is None or source.peer != peer.public_key:
            return False
        last = peer.last_received_s
        return initiation or last is None or now - last > roaming.to_relay_after_s
