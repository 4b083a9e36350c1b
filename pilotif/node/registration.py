"""This node's registration with the registry, sans-IO: the heartbeat (register every
REGISTER_INTERVAL_S, at once after a network change, a relay's notice or a switch of
replica), the registry's key (pinned on first contact, asked again when the registry
falls silent: one that answers with another key is refused), and what the registry's
answers say: our public endpoint, the replica, since when it is silent.

Inputs: `start`, `network_changed`, `again`, the link's answers (`registered`,
`key_answer`, `silent`, `switched`, `move_asked`) and `handle_timer(now)` at or after
`next_s`. Outputs: requests on the registry link, events in the sink, and from
`registered` a `Registered`: what the reply means for the rest of the node (its address,
the relays, whether to hand-shake again), which the node core applies.
"""

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
from pilotif.node.registry_link import (
    REGISTER_INTERVAL_S,
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
UNREACHABLE: Final = "unreachable"
"""The code of a failure that got no answer at all (as opposed to a refusal)."""
REGISTRY_RETRY_S: Final = 1.0
"""While the registry is unreachable: the pause before registering again, so that a
registry that comes back (a restart, an upgrade) sees its nodes within about a second."""
REGISTRY_RECENT_S: Final = 120.0
"""For this long after the registry stopped answering, retry every REGISTRY_RETRY_S; later
only every REGISTER_INTERVAL_S (each register still tries REQUEST_ATTEMPTS times)."""
DEFAULT_NETWORK: Final = "100.64.0.0/10"
"""The overlay prefix when a registry's reply names none."""


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
        self.lost_s: float | None = None
        """When the registry stopped answering (None while it answers)."""
        self.key_refused: str | None = None
        """Why the registry at our address is refused (it has another key), with what to do."""
        self.next_s: float | None = None
        """When the heartbeat registers next (None: not before the first answer)."""
        self._checking_key = False
        self._again_at_s = 0.0
        self._rehandshake = False
        """After a network change: new handshakes through the relay once the registry
        knows our new address (the peers then move to the relay at once)."""

    # -- inputs: commands ----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Learn the registry's key if none is pinned, then register."""
        if self._link.registry_key is None:
            self._link.fetch_key(now)
        else:
            self.register(now)

    def resumed(self, now: float) -> None:
        """The node started from its cache, the registry silent: retry soon."""
        self.lost_s = now
        self.next_s = now + REGISTRY_RETRY_S

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

    def _reregister(self, now: float) -> None:
        """Register now, outside the heartbeat (which starts again from here)."""
        self._again_at_s = now + REREGISTER_MIN_S
        self.next_s = now + REGISTER_INTERVAL_S
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
        endpoint, previous = reply.get("public_endpoint"), self.public_endpoint
        self.public_endpoint = endpoint if isinstance(endpoint, str) else None
        moved = joined and previous not in (None, self.public_endpoint)
        if moved:
            self._sink.items.append(PublicEndpointChanged(previous, self.public_endpoint))
        self.next_s = now + REGISTER_INTERVAL_S
        self.lost_s = self.key_refused = None
        rehandshake, self._rehandshake = self._rehandshake or moved, False
        return Registered(
            ipv4,
            network,
            name if isinstance(name, str) else None,
            relays_from_json(reply.get("relays")),
            moved,
            rehandshake,
            reply.get("resync") is True,
        )

    def silent(self, now: float, *, joined: bool, online: bool) -> bool:
        """A registration got no answer after every attempt; whether the registry is
        (still) to be taken for offline."""
        offline = online or not joined
        if offline and joined:
            self.lost_s = now
            self._sink.items.append(RegistryLost(self.unreachable()[1]))
        if not self._checking_key:
            # Silence from a pinned registry: does it answer with another key? (Asked
            # again at each retry: a registry that lost its state comes back silent.)
            self._checking_key = True
            self._link.fetch_key(now)
        if joined:
            lost = self.lost_s
            recent = lost is not None and now - lost <= REGISTRY_RECENT_S
            self.next_s = now + (REGISTRY_RETRY_S if recent else REGISTER_INTERVAL_S)
        return offline

    def key_answer(self, key: bytes | None, now: float, *, joined: bool) -> None:
        """The registry said its key (None: the key request got no answer)."""
        pinned = self._link.registry_key
        if pinned is None:
            if key is None:
                if not joined:
                    self._fail(*self.unreachable())
                return
            self._trust.registry_key = key
            self._link.use_key(key)
            self._sink.items += [RegistryKeyPinned(key), TrustStateChanged()]
            self.register(now)
            return
        self._checking_key = False
        if key is None or key == pinned:
            if not joined:
                self._fail(*self.unreachable())
            return
        failure = self._key_failure(key, pinned)
        if joined:
            self.key_refused = f"{failure[1]}; {failure[2]}"
            self._sink.items.append(RegistryKeyRefused(key, failure[1], failure[2]))
        else:
            self._fail(*failure)

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

    def handle_timer(self, now: float) -> None:
        """The heartbeat, when due."""
        if self.next_s is not None and now >= self.next_s:
            self.next_s = now + REGISTER_INTERVAL_S
            self.register(now)

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
            "lan_endpoints": self.lan_endpoints,
            "nat": self.nat_type(),
        }

    def _fail(self, code: str, error: str, hint: str) -> None:
        self._sink.items.append(JoinFailed(code, error, hint))
