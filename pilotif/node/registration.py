"""This node's registration with the registry, sans-IO: the heartbeat (register every
REGISTER_INTERVAL_S, at once after a network change, a relay's notice or a switch of
replica), the registry's key (pinned on first contact, asked again when the registry
falls silent: one that answers with another key is refused), and what the registry's
answers say: our public endpoint, the replica, since when it is silent.

While the registry is away (a registration got no answer after every attempt, or the node
started from its cache) the node sends no registrations: it probes, one key request
(36 bytes, answered statelessly), every PROBE_EVERY_S at first and then less often, a
pause of PROBE_BACKOFF of the outage so far, at most PROBE_MAX_S (each with
PROBE_JITTER), for as long as the outage lasts. It registers in full once a probe is
answered with the pinned key, or once the registry, back, answers a probe it did not see
(registry/recall.py tells its nodes at the pace it takes them back): so a node is back
within about a second of the return, and by its own probes within a tenth of the
outage's length (at most PROBE_MAX_S) where the registry does not tell it.

Inputs: `start`, `network_changed`, `again`, the link's answers (`registered`,
`key_answer`, `silent`, `switched`, `move_asked`) and `handle_timer(now)` at or after
`next_s`. Outputs: requests on the registry link, events in the sink, and from
`registered` a `Registered`: what the reply means for the rest of the node (its address,
the relays, whether to hand-shake again), which the node core applies.
"""

import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Final

from pilotif.control.relay_info import RelayInfo, relays_from_json
from pilotif.control.wire import format_endpoint
from pilotif.net.fallback import TransportMode
from pilotif.net.proxy import Proxy
from pilotif.node.events import (
    EventSink,
    JoinFailed,
    PublicEndpointChanged,
    RegistryKeyPinned,
    RegistryKeyRefused,
    RegistryLost,
    RegistrySwitched,
    RequestError,
    TrustStateChanged,
)
from pilotif.node.other_family import OtherFamily
from pilotif.node.registry_link import (
    REGISTER_INTERVAL_S,
    REQUEST_ATTEMPTS,
    REQUEST_RETRY_S,
    Errands,
    MoveAsked,
    RegistryLink,
    SwitchedRegistry,
)
from pilotif.node.trust import TrustRecord
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import encode_key

REREGISTER_MIN_S: Final = 2.0
"""The shortest time between two registrations the relay's notices cause."""
CARRIER_SETTLE_S: Final = REQUEST_ATTEMPTS * REQUEST_RETRY_S
"""After the carrier changed, how long a registration sent over the one before may still
be answered (the registry then saw us at that carrier's address)."""
UNREACHABLE: Final = "unreachable"
"""The code of a failure that got no answer at all (as opposed to a refusal)."""
PROBE_EVERY_S: Final = 1.0
"""While the registry is away: the mean pause between two probes (one 36-byte key request
each) at first, so that a registry back after a short outage (a restart, an upgrade)
sees its nodes within about a second."""
PROBE_BACKOFF: Final = 0.1
"""Later the mean pause is this fraction of the time since the registry was lost: a
fleet does not hammer a registry that is down for long, and notices its return within
a tenth of the outage's length by itself (the registry tells it sooner)."""
PROBE_MAX_S: Final = 10.0
"""The longest mean pause towards each registry address (with replicas, probed in turn,
the pause is this over their number): the probes keep the NAT's mapping towards it open
(UDP mappings may last 30 s; WireGuard keeps its own open every 25 s), so the key answer
a returning registry sends reaches the node."""
PROBE_JITTER: Final = 0.25
"""Each pause is stretched or shrunk by up to this fraction at random: a fleet that lost
its registry at the same moment does not probe in step."""
DEFAULT_NETWORK: Final = "100.64.0.0/10"
"""The overlay prefix when a registry's reply names none."""


HEARTBEAT_JITTER: Final = 0.1
"""Each pause between two heartbeats is REGISTER_INTERVAL_S stretched or shrunk by up to
this fraction at random: nodes whose answers a busy registry held back together do not
come back together every interval, a wave that held it up again (the synchronization of
periodic messages: Floyd and Jacobson, 1993). At most 22 s: within the 30 s a NAT may
keep a UDP mapping."""


def heartbeat_pause_s(rng: random.Random, interval_s: float = REGISTER_INTERVAL_S) -> float:
    """The pause before the next heartbeat: `interval_s`, give or take HEARTBEAT_JITTER."""
    return interval_s * (1 + HEARTBEAT_JITTER * (2 * rng.random() - 1))


def probe_pause_s(away_s: float, rng: random.Random, addresses: int = 1) -> float:
    """The pause before the next probe when the registry has been away for `away_s`:
    PROBE_BACKOFF of it, at least PROBE_EVERY_S and at most PROBE_MAX_S over the number
    of registry `addresses` probed in turn, give or take PROBE_JITTER."""
    mean_s = min(max(away_s * PROBE_BACKOFF, PROBE_EVERY_S), PROBE_MAX_S / addresses)
    return mean_s * (1 + PROBE_JITTER * (2 * rng.random() - 1))


@dataclass(frozen=True)
class NodeOptions:
    """How `up` joins a registry."""

    registry: Endpoint
    """The registry's HOST, PORT (a name may have several addresses: replicas)."""
    hostname: str
    tags: list[str]
    registry_key: bytes | None
    auto_approve: str | None
    """None (ask), "all", "network" (members of our network), or "tag:NAME" (nodes the
    registry's operator granted that tag)."""
    accept_dns: bool = True
    """Point the system resolver at our DNS responder for `.pilot` names."""
    join_key: str | None = None
    """A join key from the registry's operator (sent until the registry admits us)."""
    registry_replicas: tuple[Endpoint, ...] = ()
    """Other replicas of the registry (HOST, PORT), tried in turn when one is silent."""
    transport: TransportMode = TransportMode.AUTO
    """UDP, the stream (TCP) to the registry and relays, or the stream when UDP fails."""
    proxy: Proxy | None = None
    """The HTTP proxy streams go through (`--proxy`, HTTPS_PROXY)."""


@dataclass(frozen=True)
class Registered:
    """The registry took our registration: what the rest of the node does with it."""

    ipv4: IPv4Address
    network: IPv4Network
    network_name: str | None
    """The registry's network we are a member of (a join key put us there)."""
    relays: list[RelayInfo]
    endpoint_moved: bool
    """Our public endpoint changed with nothing changing on this host (a new lease)."""
    rehandshake: bool
    """Hand-shake with every peer again (through the relay): the registry knows our
    new address now."""
    resync: bool
    """The registry did not know our session (it restarted): pushes it had for us
    meanwhile were not sent."""


class Registration:
    """See the module docstring."""

    def __init__(
        self,
        options: NodeOptions,
        link: RegistryLink,
        errands: Errands,
        trust: TrustRecord,
        sink: EventSink,
        lan_endpoints: list[str],
    ) -> None:
        self.options = options
        self.lan_endpoints = lan_endpoints
        self._link, self._errands, self._trust, self._sink = link, errands, trust, sink
        self.replica: str | None = None
        """The name of the registry replica that answered our last registration."""
        self.admitted = False
        """Whether the registry accepted a registration of this run (the join key is
        sent until then: revoking it later does not turn the node away)."""
        self.public_endpoint: str | None = None
        self.other_family = OtherFamily(link, errands)
        """Our public endpoint of the other IP family (a dual-stack registry)."""
        self.lost_s: float | None = None
        """When the registry stopped answering (None while it answers)."""
        self.key_refused: str | None = None
        """Why the registry at our address is refused (it has another key), with what to do."""
        self.next_s: float | None = None
        """When the heartbeat registers next (None: not before the first answer, nor
        while the registry is away)."""
        self.probe_s: float | None = None
        """When the next probe goes (None: the registry is not away)."""
        self._away_s: float | None = None
        """Since when no registration was answered (the probes back off from then: a
        probe answered by a registry that then leaves the registration unanswered does
        not start them again at PROBE_EVERY_S)."""
        self.rng = random.Random()
        """The heartbeats' and the probes' jitter (tests seed it)."""
        self._checking_key = False
        self._again_at_s = 0.0
        self._rehandshake = False
        """After a network change: new handshakes through the relay once the registry
        knows our new address (the peers then move to the relay at once)."""
        self._over_stream = False
        """Whether the registry hears us over a stream (net/streams.py) rather than UDP:
        the endpoint it then sees is the stream's, not our UDP mapping."""
        self._carrier_changed_s: float | None = None
        """When the carrier last changed."""
        self._udp_endpoint: str | None = None
        """The public endpoint the registry last saw over UDP alone: a move is a change
        of this one."""

    # -- inputs: commands ----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Learn the registry's key if none is pinned, then register."""
        if self._link.registry_key is None:
            self._link.fetch_key(now)
        else:
            self.register(now)

    def resumed(self, now: float) -> None:
        """The node started from its cache, the registry silent: probe until it answers."""
        self.lost_s = now
        self._away(now)

    def _away(self, now: float) -> None:
        """The registry does not answer: no heartbeat, a probe at once (after a pause if
        it answered a probe since it last took a registration) and then after each
        `probe_pause_s` until one is answered."""
        self.next_s = None
        if self._away_s is None:
            self._away_s = now
            self.probe_s = now
        elif self.probe_s is None:
            # A probe was answered, the registration was not: go on backing off.
            self.probe_s = now + self._probe_pause_s(now)

    def _probe(self, now: float) -> None:
        self._link.probe()
        self.probe_s = now + self._probe_pause_s(now)

    def _probe_pause_s(self, now: float) -> float:
        away_s = 0.0 if self._away_s is None else now - self._away_s
        return probe_pause_s(away_s, self.rng, len(self._link.endpoints))

    def register(self, now: float) -> None:
        """Send a registration (the key first, if none is pinned)."""
        if self._link.registry_key is None:
            # Started from the cache with no pinned key (registry.pub was removed).
            self._link.fetch_key(now)
            return
        fields: dict[str, Any] = {"hostname": self.options.hostname, "tags": self.options.tags}
        if self.options.join_key is not None and not self.admitted:
            fields["join_key"] = self.options.join_key
        self._errands.send("register", {**fields, "lan": self.lan_endpoints}, now)
        self._link.keep_others_open()

    def network_changed(self, lan_endpoints: list[str], now: float, *, joined: bool) -> None:
        """This host's addresses changed: register at once from wherever we are now (and
        hand-shake again once the registry knows)."""
        self.lan_endpoints = lan_endpoints
        if joined:
            self._rehandshake = True
            self._reregister(now)

    def again(self, now: float) -> None:
        """Register at once (the relay does not know our address, or a queued request
        got no answer), unless that happened within REREGISTER_MIN_S."""
        if now >= self._again_at_s:
            self._reregister(now)

    def carrier_changed(self, now: float, *, over_stream: bool) -> None:
        """The registry and relays now hear us over another transport: register at once;
        the endpoint the registry then sees moved with the carrier, not with our NAT
        mapping (our UDP towards peers did not move: their paths stay)."""
        self._over_stream = over_stream
        self._carrier_changed_s = now
        self.again(now)

    def _reregister(self, now: float) -> None:
        """Register now, outside the heartbeat (which starts again from here)."""
        self._again_at_s = now + REREGISTER_MIN_S
        self.next_s = now + heartbeat_pause_s(self.rng)
        self.register(now)

    # -- inputs: the link's answers --------------------------------------------------------

    def registered(
        self,
        reply: dict[str, Any],
        now: float,
        *,
        joined: bool,
        address: tuple[IPv4Address | None, IPv4Network | None],
    ) -> Registered | None:
        """The registry took our registration (None: its reply cannot be used). `address`
        is the node's (ipv4, network) now: the registry may not move it."""
        try:
            ipv4 = IPv4Address(reply["ipv4"])
            network = IPv4Network(reply.get("network", DEFAULT_NETWORK))
        except (KeyError, ValueError):
            self._sink.items.append(RequestError("register", "the registry's reply has no address"))
            return None
        if address[1] is not None and (ipv4, network) != address:
            self._sink.items.append(
                RequestError("register", f"the registry moved this node to {ipv4} in {network}")
            )
            return None
        self.admitted = True
        replica, name = reply.get("replica"), reply.get("network_name")
        self.replica = replica if isinstance(replica, str) else None
        endpoint = reply.get("public_endpoint")
        self.public_endpoint = endpoint if isinstance(endpoint, str) else None
        moved = False
        if self._over_udp(now):
            previous, self._udp_endpoint = self._udp_endpoint, self.public_endpoint
            moved = joined and previous not in (None, self.public_endpoint)
            if moved:
                self._sink.items.append(PublicEndpointChanged(previous, self.public_endpoint))
        self.next_s = now + heartbeat_pause_s(self.rng)
        self.lost_s = self.key_refused = self.probe_s = self._away_s = None
        rehandshake, self._rehandshake = self._rehandshake or moved, False
        self.other_family.registered(now)
        return Registered(
            ipv4,
            network,
            name if isinstance(name, str) else None,
            relays_from_json(reply.get("relays")),
            moved,
            rehandshake,
            reply.get("resync") is True,
        )

    def _over_udp(self, now: float) -> bool:
        """Whether an answer shows the endpoint of our UDP mapping: we are on UDP, and
        not so soon after a change that it may answer what went over the stream."""
        if self._over_stream:
            return False
        return self._carrier_changed_s is None or now >= self._carrier_changed_s + CARRIER_SETTLE_S

    def silent(self, now: float, *, joined: bool, online: bool) -> bool:
        """A registration got no answer after every attempt; whether the registry is
        (still) to be taken for offline."""
        offline = online or not joined
        if offline and joined:
            self.lost_s = now
            self._sink.items.append(RegistryLost(self.unreachable()[1]))
        if joined:
            # The probes ask for the key: a registry that lost its state and came back
            # with another one is refused (key_answer) as soon as it answers.
            self._away(now)
        elif not self._checking_key:
            # Joining failed: does the registry answer with another key than the pinned?
            self._checking_key = True
            self._link.fetch_key(now)
        return offline

    def key_answer(
        self, key: bytes | None, now: float, *, joined: bool, source: Endpoint | None = None
    ) -> None:
        """The registry at `source` (None: the current address) said its key (None: the
        key request got no answer). While the registry is away, the pinned key back means
        it is back: register in full now (there, if a replica answered)."""
        pinned = self._link.registry_key
        if pinned is None:
            if key is None:
                if not joined:
                    self._fail(*self.unreachable())
                return
            self._trust.registry_key = key
            self._link.use_key(key)
            self._sink.items += [RegistryKeyPinned(key), TrustStateChanged()]
            if self.probe_s is not None:
                self._back(now, source)
            else:
                self.register(now)
            return
        self._checking_key = False
        if key == pinned and self.probe_s is not None:
            self._back(now, source)
            return
        if key is None or key == pinned:
            if not joined:
                self._fail(*self.unreachable())
            return
        failure = self._key_failure(key, pinned)
        if not joined:
            self._fail(*failure)
            return
        refused = f"{failure[1]}; {failure[2]}"
        if refused != self.key_refused:
            # Said once: the probes go on (the operator may bring the old key back).
            self.key_refused = refused
            self._sink.items.append(RegistryKeyRefused(key, failure[1], failure[2]))

    def _back(self, now: float, source: Endpoint | None) -> None:
        """The registry answers: stop probing, register (the heartbeat starts again)."""
        self.probe_s = None
        self.next_s = now + heartbeat_pause_s(self.rng)
        if source is not None and source != self._link.endpoint:
            # A replica answered: what waits goes there, a registration with it.
            self.switched(self._link.switch_to(source, now), now, joined=True)
        elif not self._errands.waiting("register"):
            self.register(now)

    def _key_failure(self, key: bytes, pinned: bytes) -> tuple[str, str, str]:
        where = format_endpoint(self._link.endpoint)
        if self.options.registry_key is not None:
            return (
                "registry_key_mismatch",
                f"the registry at {where} has key {encode_key(key)}, not the one given "
                f"with --registry-key ({encode_key(pinned)})",
                "check the key the registry logged at start and pass that to --registry-key",
            )
        return (
            "registry_key_changed",
            f"the registry at {where} now has key {encode_key(key)}, not the pinned "
            f"{encode_key(pinned)}",
            "if that is expected, delete STATE_DIR/registry.pub or pass the new key "
            "with --registry-key",
        )

    def switched(self, switched: SwitchedRegistry, now: float, *, joined: bool) -> None:
        """Another replica takes our requests: it learns where we are at once (what
        waited was sent to it already, a registration among them if one waited)."""
        self.replica = None
        self._sink.items.append(
            RegistrySwitched(format_endpoint(switched.endpoint), format_endpoint(switched.previous))
        )
        if joined and not self._errands.waiting("register"):
            self._reregister(now)

    def move_asked(self, asked: MoveAsked, now: float, *, joined: bool) -> None:
        """A replica says ours died: move to it (only if the one that died is ours:
        another may have told us late)."""
        if self.replica is None or self.replica == asked.gone:
            self.switched(self._link.switch_to(asked.endpoint, now), now, joined=joined)

    def next_timer(self) -> float | None:
        """When `handle_timer` is due: the heartbeat, or the next probe."""
        return min((t for t in (self.next_s, self.probe_s) if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """The heartbeat, or a probe, when due."""
        if self.next_s is not None and now >= self.next_s:
            self.next_s = now + heartbeat_pause_s(self.rng)
            self.register(now)
        if self.probe_s is not None and now >= self.probe_s:
            self._probe(now)

    # -- views -------------------------------------------------------------------------

    def unreachable(self) -> tuple[str, str, str]:
        """The code, error and hint of a request the registry never answered."""
        return (
            UNREACHABLE,
            f"no answer from the registry at {format_endpoint(self._link.endpoint)}",
            "check the address, that UDP to it is allowed, and that the registry runs",
        )

    def nat_type(self) -> str:
        """What the registry's view of our endpoint says about the NAT in front of us."""
        if self.public_endpoint is None:
            return "unknown"
        if self.public_endpoint in self.lan_endpoints:
            return "none"
        local_ports = {text.rpartition(":")[2] for text in self.lan_endpoints}
        if self.public_endpoint.rpartition(":")[2] in local_ports:
            return "port-preserving (cone-like: direct paths likely)"
        return "port-changing (symmetric-like: may need the relay)"

    def describe(self, online: bool) -> dict[str, Any]:
        """The registry part of `pilotif status`."""
        key = self._link.registry_key
        return {
            "registry": format_endpoint(self._link.endpoint),
            "registry_replica": self.replica,
            "registry_replicas": [format_endpoint(e) for e in self._link.endpoints],
            "registry_key": encode_key(key) if key else None,
            "registry_online": online,
            "registry_lost_s": self.lost_s,
            "registry_key_refused": self.key_refused,
            "public_endpoint": self.public_endpoint,
            "public_endpoints": [
                e for e in (self.public_endpoint, self.other_family.endpoint) if e is not None
            ],
            "lan_endpoints": self.lan_endpoints,
            "nat": self.nat_type(),
        }

    def _fail(self, code: str, error: str, hint: str) -> None:
        self._sink.items.append(JoinFailed(code, error, hint))
