"""The path manager, sans-IO: for each trusted peer, where its traffic goes (the relay or
a direct UDP endpoint), probe rounds, punching, the checks of a direct path, roaming and
the fall back to the relay, in one place (Tailscale's `magicsock/endpoint.go` is the
model). The states and their table are `pilotif.node.paths`; `_enter` does what
entering each state means.

Inputs (each with `now`): `add`/`remove` (trusted peers come and go), `punch` (the
registry's punch: the peer's candidates), `cached_endpoint` (a start without the
registry), `device_reported` (endpoints the device moved, as each path's `Roaming`
let it), `network_changed`, and `handle_timer(now)` at or after `next_timer()`.
Outputs: the device it steers (endpoints, keepalives, probes, echoes), `PathChanged`
events in the node's event list, `take_openers()` (datagrams that open our NAT towards
candidates, each with its hop limit) and `take_rounds()` (peers whose next probe round
to ask the registry for).

Punching that does not depend on distance: at a punch, openers go out at once with a
TTL of OPENER_HOPS, which takes them through our own NAT (it maps our port towards the
candidate) and lets them die at the next router, before the peer's: no router ever gets
one of them, so none takes it for itself (a router without an input firewall keeps a
conntrack entry for such a packet, and the peer's later outbound to us then gets another
port). Probes, which must arrive, start OPENER_LEAD_S later, when both sides' openers
have left, however near the two routers are to each other.

Timers: `next_timer()` is a bound kept as deadlines are armed (as the device's
`wake_by`): it never walks the peers; `handle_timer` walks them once and sets the bound
again. A deadline that moves later only makes a wake-up early. The one deadline the
device moves without telling (data arriving again, after which a quiet peer gets a
keepalive) is looked at every QUIET_PEER_KEEPALIVE_S while a peer has a session.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any, Final

from pilotif.control.wire import PUNCH_OPENER, format_endpoint
from pilotif.node.candidates import usable_candidates
from pilotif.node.events import EventSink, PathChanged
from pilotif.node.paths import (
    DIRECT_PATH_TIMEOUT_S,
    DIRECT_STATES,
    FALLBACK_ROUND_S,
    HOLD_AFTER_FALLBACK_S,
    PATH_CHECK_AFTER_S,
    PROBE_DURATION_S,
    PROBE_INTERVAL_S,
    QUIET_PEER_KEEPALIVE_S,
    QUIET_RELAY_KEEPALIVE_MIN_S,
    ROAMING,
    ROUND_BACKOFF_FIRST_S,
    ROUND_BACKOFF_MAX_S,
    STABLE_DIRECT_S,
    PathInput,
    PathState,
    next_state,
)
from pilotif.node.peers import TrustedPeer
from pilotif.node.registry_link import REGISTER_INTERVAL_S
from pilotif.packet.icmp import echo_request_packet
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint, EndpointChanged, Event, PeerEndpoint, RelayEndpoint
from pilotif.wg.peer import Peer

RELAY_KEEPALIVE_S: Final = 2
"""The persistent keepalive of a relayed peer: a NAT mapping towards the registry that
changed (flushed, or the router restarted) is found within this, from the relay's
notice, on both sides (a direct peer keeps DIRECT_KEEPALIVE_S)."""
DIRECT_KEEPALIVE_S: Final = int(REGISTER_INTERVAL_S)
"""The persistent keepalive of a direct peer (as often as the node registers)."""
PATH_POLL_S: Final = 0.5
"""How often a direct path's answers are looked at."""
OPENER_HOPS: Final = 2
"""The TTL (hop limit) of punch openers: one hop to our router, which forwards it (and
maps our port towards the candidate), and it dies at the router after (the first hop of
the internet, or a carrier-grade NAT in front of ours, which then maps nothing: our
probes do that later)."""
OPENER_LEAD_S: Final = 0.5
"""How long after a punch's openers the round's probes start: more than the two sides'
punches are apart (the registry times them to one moment; this covers the time each
side takes to act on its own, on a loaded machine too)."""
MAX_PUNCH_DELAY_MS: Final = 1_000
"""The longest a punch may be put off to meet the other side's."""
_MS_PER_S: Final = 1000


@dataclass(frozen=True)
class Opener:
    """A datagram that opens our NAT towards a peer's candidate, and is meant to go no
    further than `hops` routers."""

    datagram: bytes
    endpoint: Endpoint
    hops: int


@dataclass
class PeerPath:
    """Where one trusted peer's path stands."""

    peer: TrustedPeer
    state: PathState = PathState.RELAY
    candidates: list[Endpoint] = field(default_factory=list)
    round_until_s: float = 0.0
    """Probes go out until then (also once direct: the other side may need them)."""
    next_probe_s: float = 0.0
    next_round_s: float | None = None
    """When to ask the registry for the next probe round (relayed peers)."""
    backoff_s: float = ROUND_BACKOFF_FIRST_S
    direct_since_s: float | None = None
    next_check_s: float = 0.0
    """When to look at (or echo on) the direct path next."""
    keepalive_for_s: float | None = None
    """The data arrival (the device's last_data_received_s) after which the quiet-peer
    keepalive went out."""
    relay_keepalive_at_s: float = 0.0
    """When a quiet-peer keepalive may go through the relay again."""

    @property
    def key(self) -> bytes:
        return self.peer.public_key


class PathManager:
    """Every trusted peer's path; see the module docstring."""

    def __init__(self, device: Device, sink: EventSink) -> None:
        self.device = device
        self._sink = sink
        self._paths: dict[bytes, PeerPath] = {}
        self.local_ipv4: IPv4Address | None = None
        """Our overlay address, the source of path echoes (None before joining)."""
        self.registry_online = False
        """Probe rounds are asked for only while the registry answers."""
        self.candidates_refused = 0
        """Peers' candidate endpoints never probed: loopback, link-local, our own... (see
        pilotif.node.candidates)."""
        self._openers: list[Opener] = []
        self._rounds: list[bytes] = []
        self._delayed_punches: list[tuple[float, bytes, list[Endpoint]]] = []
        """Punches to act on later: (when, peer key, candidates)."""
        self._path_checks = 0
        self._due_s: float | None = None
        """No peer's deadline comes before this (None: no peer has one)."""

    # -- peers -----------------------------------------------------------------------

    def add(self, peer: TrustedPeer, now: float) -> None:
        """A new trusted peer, on the relay; its first probe round is asked for at once."""
        path = PeerPath(peer, next_round_s=now)
        self._paths[peer.public_key] = path
        self.device.set_roaming(peer.public_key, ROAMING[path.state])
        self._lower(now)

    def remove(self, key: bytes) -> None:
        self._paths.pop(key, None)

    def state(self, key: bytes) -> PathState | None:
        path = self._paths.get(key)
        return path.state if path is not None else None

    def backoff_s(self, key: bytes) -> float | None:
        """The wait before the peer's next probe round after this one (None: no peer)."""
        path = self._paths.get(key)
        return path.backoff_s if path is not None else None

    def path_of(self, key: bytes) -> str:
        """A peer's path: 'direct', 'relay' or 'none' (no session yet)."""
        state = self.device.peer(key)
        if state is None or state.current is None or state.endpoint is None:
            return "none"
        path = self._paths.get(key)
        if path is not None:
            return "direct" if path.state in DIRECT_STATES else "relay"
        return "relay" if isinstance(state.endpoint, RelayEndpoint) else "direct"

    # -- inputs ----------------------------------------------------------------------

    def punch(
        self,
        key: bytes,
        message: dict[str, Any],
        lan_endpoints: list[str],
        overlay: list[IPv4Network | IPv6Network],
        now: float,
    ) -> None:
        """The registry's punch for a peer: a probe round towards its candidates, now
        or when the registry says the other side's punch arrives."""
        candidates = message.get("candidates")
        if key not in self._paths or not isinstance(candidates, list):
            return
        endpoints, refused = usable_candidates(candidates, lan_endpoints, overlay)
        self.candidates_refused += refused
        delay_ms = message.get("delay_ms", 0)
        if type(delay_ms) is int and 0 < delay_ms <= MAX_PUNCH_DELAY_MS:
            at = now + delay_ms / _MS_PER_S
            self._delayed_punches.append((at, key, endpoints))
            self._lower(at)
            return
        self._start_round(key, endpoints, now)

    def cached_endpoint(self, key: bytes, endpoint: Endpoint, now: float) -> None:
        """A start without the registry: the peer's last direct endpoint, tried at once."""
        path = self._paths.get(key)
        if path is not None:
            self._input(path, PathInput.CACHED_ENDPOINT, now, endpoint)
            self.device.initiate_handshake(key, now)
            self._lower_to(path, now)

    def device_reported(self, events: Iterable[Event], now: float) -> None:
        """The device's events: a peer's endpoint that moved feeds the table."""
        for event in events:
            if isinstance(event, EndpointChanged) and event.public_key in self._paths:
                source = event.endpoint
                relayed = isinstance(source, RelayEndpoint)
                kind = PathInput.RELAYED_PACKET if relayed else PathInput.DIRECT_PACKET
                path = self._paths[event.public_key]
                self._input(path, kind, now, source)
                self._lower_to(path, now)

    def network_changed(self, now: float) -> None:
        """Our NAT mapping, and so every peer's view of our endpoint, changed: back to
        the relay with each peer, and a probe round with each."""
        for path in self._paths.values():
            self._input(path, PathInput.NETWORK_CHANGED, now)
            self._rounds.append(path.key)
            self._lower_to(path, now)

    # -- timer -----------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When `handle_timer` is due next, at the latest."""
        return self._due_s

    def handle_timer(self, now: float) -> None:
        """Delayed punches, probes, probe rounds and path checks that are due."""
        due = [item for item in self._delayed_punches if item[0] <= now]
        if due:
            self._delayed_punches = [item for item in self._delayed_punches if item[0] > now]
            for _, key, endpoints in due:
                self._start_round(key, endpoints, now)
        deadlines: list[float | None] = [at for at, _, _ in self._delayed_punches]
        for path in list(self._paths.values()):
            self._tick(path, now)
            deadlines.append(self._deadline(path, now))
        self._due_s = min((d for d in deadlines if d is not None), default=None)

    def any_relayed(self) -> bool:
        return any(self.path_of(key) == "relay" for key in self._paths)

    def registry_changed(self, online: bool, now: float) -> None:
        """Whether the registry answers: probe rounds wait while it does not."""
        if online and not self.registry_online:
            self._lower(now)
        self.registry_online = online

    # -- outputs ---------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        return bool(self._openers or self._rounds)

    def take_openers(self) -> list[Opener]:
        """Punch openers for peers' candidates, in order; the list is handed over."""
        out, self._openers = self._openers, []
        return out

    def take_rounds(self) -> list[bytes]:
        """Peers whose next probe round to ask the registry for (`connect`), in order."""
        out, self._rounds = self._rounds, []
        return out

    # -- internals -------------------------------------------------------------------

    def _lower(self, at: float) -> None:
        """Something armed a deadline at `at`: wake by then (every peer's is computed
        again at each wake-up)."""
        if self._due_s is None or at < self._due_s:
            self._due_s = at

    def _start_round(self, key: bytes, endpoints: list[Endpoint], now: float) -> None:
        """A probe round towards a peer's candidates (the peer may have gone meanwhile)."""
        path = self._paths.get(key)
        if path is None:
            return
        path.candidates = endpoints
        self._openers += [Opener(PUNCH_OPENER, endpoint, OPENER_HOPS) for endpoint in endpoints]
        self._input(path, PathInput.PUNCH, now)
        path.next_probe_s = now + OPENER_LEAD_S
        path.round_until_s = path.next_probe_s + PROBE_DURATION_S
        # Nothing of ours may reach the peer's router before its openers left: its
        # session starts through the relay, the direct initiations with the probes.
        self.device.probe_with_initiations(key, ())
        self.device.initiate_handshake(key, now)
        self._tick(path, now)
        self._lower_to(path, now)

    def _lower_to(self, path: PeerPath, now: float) -> None:
        """An input moved the path's deadlines: wake by its next one."""
        deadline = self._deadline(path, now)
        if deadline is not None:
            self._lower(deadline)

    def _input(
        self, path: PeerPath, event: PathInput, now: float, source: PeerEndpoint | None = None
    ) -> None:
        """Feed the path table (`source`: where the endpoint moved, for the packet inputs)."""
        state = next_state(path.state, event)
        if state == path.state:
            return
        previous, path.state = path.state, state
        self.device.set_roaming(path.key, ROAMING[state])
        self._enter(path, previous, event, now, source)

    def _enter(
        self,
        path: PeerPath,
        previous: PathState,
        event: PathInput,
        now: float,
        source: PeerEndpoint | None,
    ) -> None:
        """What entering `path.state` does."""
        state = path.state
        if state == PathState.DIRECT and previous not in DIRECT_STATES:
            self._enter_direct(path, event, now, source)
        elif state == PathState.SUSPECT:
            self._echo(path, now)
        elif state == PathState.PROBING:
            path.next_round_s = None
        elif state in (PathState.RELAY, PathState.HELD):
            if previous in DIRECT_STATES:
                self._leave_direct(path, event, now)
            else:
                path.next_round_s = now + path.backoff_s
                path.backoff_s = min(path.backoff_s * 2, ROUND_BACKOFF_MAX_S)

    def _enter_direct(
        self, path: PeerPath, event: PathInput, now: float, source: PeerEndpoint | None
    ) -> None:
        if isinstance(source, tuple):
            # Sends from the relay's time do not count against the new path; and the
            # probe is answered where it came from, which may be a port the registry
            # never saw (the peer's NAT chose it for us alone).
            self.device.set_endpoint(path.key, source)
            self.device.send_keepalive_to(path.key, source, now)
        path.direct_since_s = now
        path.next_round_s = None
        path.next_check_s = now + PATH_POLL_S
        self.device.set_persistent_keepalive(path.key, DIRECT_KEEPALIVE_S, now)
        endpoint = format_endpoint(source) if isinstance(source, tuple) else None
        reason = (
            "last direct endpoint (started without the registry)"
            if event == PathInput.CACHED_ENDPOINT
            else "probe answered"
        )
        self._changed(path, "direct", endpoint, reason)

    def _leave_direct(self, path: PeerPath, event: PathInput, now: float) -> None:
        self.device.set_persistent_keepalive(path.key, RELAY_KEEPALIVE_S, now)
        lived = now - (path.direct_since_s or now)
        if lived >= STABLE_DIRECT_S:
            path.backoff_s = ROUND_BACKOFF_FIRST_S
            path.next_round_s = now + FALLBACK_ROUND_S
        else:
            path.next_round_s = now + HOLD_AFTER_FALLBACK_S
        reason = {
            PathInput.SILENT: "direct path silent",
            PathInput.NETWORK_CHANGED: "this host's network changed",
        }.get(event, "the peer went back to the relay")
        if path.state == PathState.HELD:
            self.device.set_endpoint(path.key, RelayEndpoint(path.key))
        self._changed(path, "relay", None, reason)

    def _changed(self, path: PeerPath, where: str, endpoint: str | None, why: str) -> None:
        self._sink.items.append(PathChanged(path.peer.hostname, path.key, where, endpoint, why))

    def _echo(self, path: PeerPath, now: float) -> None:
        """An ICMP echo to the peer through the tunnel: its kernel answers at once, so
        one-way data does not look like a dead path."""
        if self.local_ipv4 is None:
            return
        self._path_checks += 1
        packet = echo_request_packet(self.local_ipv4, path.peer.ipv4, self._path_checks)
        self.device.send((packet,), now)
        path.next_check_s = now + PATH_CHECK_AFTER_S

    def _deadline(self, path: PeerPath, now: float) -> float | None:
        deadlines: list[float | None] = []
        if path.round_until_s > path.next_probe_s:
            deadlines.append(path.next_probe_s)
        if path.state == PathState.PROBING:
            deadlines.append(path.round_until_s)
        if path.next_round_s is not None and self.registry_online:
            deadlines.append(path.next_round_s)
        if path.state in DIRECT_STATES:
            deadlines.append(path.next_check_s)
        state = self.device.peer(path.key)
        if state is not None:
            due = _quiet_keepalive_due(path, state)
            # Data that starts arriving is no event: look again within the keepalive's
            # delay, which keeps it on time.
            deadlines.append(due if due is not None else now + QUIET_PEER_KEEPALIVE_S)
        return min((d for d in deadlines if d is not None), default=None)

    def _tick(self, path: PeerPath, now: float) -> None:
        state = self.device.peer(path.key)
        if state is None:
            return
        if now < path.round_until_s and now >= path.next_probe_s:
            self._probe(path, state, now)
        if now >= path.round_until_s and state.probe_endpoints:
            self.device.probe_with_initiations(path.key, ())
        if path.state == PathState.PROBING and now >= path.round_until_s:
            self._input(path, PathInput.ROUND_OVER, now)
        if path.next_round_s is not None and now >= path.next_round_s and self.registry_online:
            path.next_round_s = now + path.backoff_s
            self._rounds.append(path.key)
        if path.state in DIRECT_STATES and now >= path.next_check_s:
            path.next_check_s = now + PATH_POLL_S
            self._check_direct(path, state, now)
        due = _quiet_keepalive_due(path, state)
        if due is not None and now >= due:
            self._quiet_keepalive(path, state, now)

    def _probe(self, path: PeerPath, state: Peer, now: float) -> None:
        path.next_probe_s = now + PROBE_INTERVAL_S
        candidates = tuple(path.candidates)
        if state.probe_endpoints != candidates:
            # The round's first probe: initiations go to the candidates too from now on,
            # and one goes at once if the relay has not brought a session yet.
            self.device.probe_with_initiations(path.key, candidates)
            if state.current is None:
                self.device.rehandshake(path.key, now)
        elif state.current is None:
            self.device.initiate_handshake(path.key, now)
        targets = list(path.candidates)
        if isinstance(state.endpoint, tuple) and path.state in DIRECT_STATES:
            # Direct: the way the peer was heard from (which our answers keep open). A
            # probe to its other candidates would move its endpoint there on arrival,
            # to a way that may not carry its packets back (IPv6 that works one way).
            targets = [state.endpoint]
        elif isinstance(state.endpoint, tuple) and state.endpoint not in targets:
            targets.append(state.endpoint)
        for target in targets:
            self.device.send_keepalive_to(path.key, target, now)

    def _quiet_keepalive(self, path: PeerPath, state: Peer, now: float) -> None:
        """A peer whose data stopped arriving gets a keepalive directly and, at most every
        QUIET_RELAY_KEEPALIVE_MIN_S, one through the relay: if our router's public
        address changed, the peer's router drops the direct one, and the relay answers
        the other with its notice that it does not know our address (we register again,
        see a new public endpoint, and punch again)."""
        path.keepalive_for_s = state.last_data_received_s
        if isinstance(state.endpoint, tuple):
            self.device.send_keepalive_to(path.key, state.endpoint, now)
        if now >= path.relay_keepalive_at_s:
            path.relay_keepalive_at_s = now + QUIET_RELAY_KEEPALIVE_MIN_S
            self.device.send_keepalive_to(path.key, RelayEndpoint(path.key), now)

    def _check_direct(self, path: PeerPath, state: Peer, now: float) -> None:
        since = state.unanswered_since_s
        if since is None:
            self._input(path, PathInput.ANSWERED, now)
        elif now - since > DIRECT_PATH_TIMEOUT_S:
            self._input(path, PathInput.SILENT, now)
        elif now - since >= PATH_CHECK_AFTER_S:
            if path.state == PathState.SUSPECT:
                self._echo(path, now)
            else:
                self._input(path, PathInput.UNANSWERED, now)


def _quiet_keepalive_due(path: PeerPath, state: Peer) -> float | None:
    """When a peer whose data stopped arriving is sent one keepalive, if it is due."""
    heard = state.last_data_received_s
    if heard is None or heard == path.keepalive_for_s:
        return None
    return heard + QUIET_PEER_KEEPALIVE_S
