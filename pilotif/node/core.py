"""The node side of the control plane, sans-IO: joining a registry, trust, trusted peers
as WireGuard peers of the overlay device, and the path to each.

Theory of operation (aioquic's QuicConnection is the model). The core has three kinds
of input, each taking `now` (seconds on the caller's monotonic clock):

- commands: `start` (join), `call` (a request for the registry on behalf of the CLI);
- the network: `receive_control(data, now)` for every 0x50/0x52 datagram from the
  registry's address, and `device_reported(events, now)`: what the device reported
  (an endpoint that roamed, as the path's `Roaming` let it; the device never calls back);
- the timer: `handle_timer(now)` at or after `get_timer()`.

Its outputs: `datagrams_to_send()` (control datagrams for the registry), the overlay
device it steers (peers, endpoints, probes: the caller drains the device as usual),
`events` (frozen dataclasses of `pilotif.node.events`) and `get_timer()`. No asyncio,
no sockets, no clock, no files: `trust` is the in-memory record the caller loads and
saves (on TrustStateChanged).

The core coordinates parts with one job each: the registry link
(`pilotif.node.registry_link`), the path manager (`pilotif.node.path_manager`: every
peer's path, after the table of `pilotif.node.paths`), consent and the trust outbox
(`pilotif.node.consent`), and the standalone relays (`pilotif.node.relays`).
"""

import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final

from pilotif.control.identity import IPV6_PREFIX, HostnameError, ipv6_for_key, normalize_hostname
from pilotif.control.relay_info import RelayInfo, relays_from_json
from pilotif.control.tickets import TICKET_LIFETIME_S
from pilotif.control.wire import format_endpoint
from pilotif.node.cache import CachedPeer, NodeSnapshot
from pilotif.node.consent import NETWORK_POLICY as NETWORK_POLICY
from pilotif.node.consent import QUEUED as QUEUED
from pilotif.node.consent import TRUST_OPS, Consent, approves
from pilotif.node.events import (
    EventSink,
    Joined,
    JoinFailed,
    NodeEvent,
    PeerAdded,
    PeerRefused,
    PeerRemoved,
    PublicEndpointChanged,
    RegistryKeyPinned,
    RegistryKeyRefused,
    RegistryLost,
    RegistryRegained,
    RegistrySwitched,
    RelaysChanged,
    RequestDone,
    RequestError,
    RequestFailed,
    StartedWithoutRegistry,
    TrustApproved,
    TrustRequested,
    TrustRevoked,
    TrustStateChanged,
    TrustSynced,
)
from pilotif.node.path_manager import RELAY_KEEPALIVE_S, PathManager
from pilotif.node.peers import TrustedPeer
from pilotif.node.policy import PeerIdentity, Policy, packet_filter
from pilotif.node.registry_link import (
    KEY_FETCH_ID,
    REGISTER_INTERVAL_S,
    KeyAnswer,
    LinkInput,
    MoveAsked,
    Push,
    RegistryLink,
    RelaySourceUnknown,
    Reply,
    SwitchedRegistry,
    message_key,
    refusal,
)
from pilotif.node.relays import HomeRelayChanged, Relays, TicketsPresented
from pilotif.node.trust import TrustRecord
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint, Event, RelayEndpoint
from pilotif.wg.keys import encode_key

TICKET_RETRY_S: Final = 5.0
"""The wait before tickets are asked for again after the registry refused or was silent."""
TICKET_REFRESH_S: Final = TICKET_LIFETIME_S / 2
"""How often the tickets at our home relay are fetched again (before they expire)."""
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


@dataclass
class _TrustSync:
    """A trust_list being fetched page by page."""

    trusted: list[dict[str, Any]] = field(default_factory=list)
    incoming: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _TicketFetch:
    """Tickets for `relay` being fetched page by page (for the peers of `peers_version`)."""

    relay: RelayInfo
    peers_version: int
    tickets: list[str] = field(default_factory=list)


class NodeCore:
    """The node side of the control plane; see the module docstring."""

    def __init__(
        self,
        options: NodeOptions,
        device: Device,
        trust: TrustRecord,
        *,
        registry: Endpoint,
        lan_endpoints: list[str],
        first_counter: int,
        first_request_id: int | None = None,
        registry_replicas: tuple[Endpoint, ...] = (),
    ) -> None:
        self.options = options
        self.device = device
        self.trust = trust
        self.lan_endpoints = lan_endpoints
        self.link = RegistryLink(
            device.local.private_key,
            registry,
            trust.registry_key,
            first_counter=first_counter,
            first_id=first_request_id,
            replicas=registry_replicas,
        )
        self.replica: str | None = None
        """The name of the registry replica that answered our last registration."""
        self.relays = Relays(device.local.private_key)
        """The standalone relays the registry names (none: it relays itself)."""
        self._tickets: _TicketFetch | None = None
        self._tickets_due_s: float | None = None
        self._tickets_version = -1
        """`peers_version` when the tickets at our home relay were fetched."""
        self.ipv4: IPv4Address | None = None
        self.ipv6 = ipv6_for_key(device.public_key)
        self.network: IPv4Network | None = None
        self.network_name: str | None = None
        self.policy = Policy()
        """The port policy applied to every peer's packets (`set_policy`)."""
        """The registry's network we are a member of (a join key put us there)."""
        self.admitted = False
        """Whether the registry accepted a registration of this run (the join key is
        sent until then: revoking it later does not turn the node away)."""
        self.public_endpoint: str | None = None
        self.registry_lost_s: float | None = None
        """When the registry stopped answering (None while it answers)."""
        self.registry_key_refused: str | None = None
        """Why the registry at our address is refused (it has another key), with what to do."""
        self.joined = False
        self.peers: dict[bytes, TrustedPeer] = {}
        self.peers_version = 0
        """Bumped whenever a peer is added or removed (the DNS table follows it)."""
        self._sink = EventSink()
        self.paths = PathManager(device, self._sink)
        self.consent = Consent(trust, self.link, self._sink)
        """This node's consent to trust, and the outbox of its trust requests."""
        """Every trusted peer's path (relay or direct), probes and punching."""
        self.refused: dict[str, str] = {}
        """Hostname -> why the registry's offer of that peer was refused (the latest)."""
        self._internal: dict[int, str] = {}
        self.requesters: dict[str, bytes] = {}
        """Hostname -> key of nodes that asked us for trust (for `approve NAME` while
        the registry is away)."""
        """Requests the core made itself, by id: their op."""
        self._sync: _TrustSync | None = None
        self._next_register_s: float | None = None
        self._checking_key = False
        self._reregister_at_s = 0.0
        self._rehandshake_after_register = False
        """After a network change: new handshakes through the relay once the registry
        knows our new address (the peers then move to the relay at once)."""

    @property
    def events(self) -> list[NodeEvent]:
        """What happened, in order (frozen dataclasses of `pilotif.node.events`): take
        the list and set a new one."""
        return self._sink.items

    @events.setter
    def events(self, events: list[NodeEvent]) -> None:
        self._sink.items = events

    @property
    def registry_online(self) -> bool:
        """Whether the registry answers (since our last registration)."""
        return self.paths.registry_online

    # -- inputs: commands ----------------------------------------------------------

    def resume(self, snapshot: NodeSnapshot, now: float) -> None:
        """Start from what the node kept, the registry being unreachable (`start` said
        so): its address, and its cached peers that it still consents to, each tried at
        once at its last direct endpoint. Registering goes on in the background."""
        self._take_address(snapshot.ipv4, snapshot.network)
        self.network_name = snapshot.network_name
        self.paths.registry_changed(False, now)
        self.registry_lost_s = now
        added = 0
        for cached in snapshot.peers:
            node = {
                "hostname": cached.hostname,
                "public_key": encode_key(cached.public_key),
                "ipv4": str(cached.ipv4),
                "tags": list(cached.tags),
                "granted_tags": list(cached.granted_tags),
                "network_name": cached.network_name,
            }
            if not self._add_peer(node, now):
                continue
            added += 1
            if cached.endpoint is not None:
                self.paths.cached_endpoint(cached.public_key, cached.endpoint, now)
        self._next_register_s = now + REGISTRY_RETRY_S
        self.events.append(StartedWithoutRegistry(snapshot.ipv4, added))

    def _take_address(self, ipv4: IPv4Address, network: IPv4Network) -> None:
        """The node is joined with this address (from the registry, or kept): peers'
        packets must be addressed to it or to the node's IPv6 address."""
        self._set_address(ipv4, network)
        self.joined = True
        self.device.accept_only_to([ipv4.packed, self.ipv6.packed])

    def _set_address(self, ipv4: IPv4Address, network: IPv4Network) -> None:
        self.ipv4, self.network = ipv4, network
        self.paths.local_ipv4 = ipv4

    def snapshot(self, listen_port: int) -> NodeSnapshot | None:
        """What to keep for a start without the registry (None before joining)."""
        if not self.joined or self.ipv4 is None or self.network is None:
            return None
        peers = []
        for peer in self.peers.values():
            state = self.device.peer(peer.public_key)
            endpoint = state.endpoint if state is not None else None
            peers.append(
                CachedPeer(
                    peer.hostname,
                    peer.public_key,
                    peer.ipv4,
                    tuple(peer.tags),
                    endpoint if isinstance(endpoint, tuple) else None,
                    tuple(peer.granted_tags),
                    peer.network_name,
                )
            )
        return NodeSnapshot(self.ipv4, self.network, listen_port, tuple(peers), self.network_name)

    def start(self, now: float) -> None:
        """Join: learn the registry's key if none is pinned, then register."""
        if self.link.registry_key is None:
            self.link.fetch_key(now)
        else:
            self._register(now)

    def call(self, op: str, fields: dict[str, Any], now: float) -> int:
        """A request for the registry; RequestDone or RequestFailed with the returned id
        follows. Trust requests and approvals record this node's consent; a rejection of a
        request withdraws it; untrust takes the peer down here at once, whatever the
        registry answers. (Rejecting a peer already trusted changes nothing, as at the
        registry.)"""
        key = message_key(fields.get("peer"))
        if key is None or op not in TRUST_OPS:
            return self.link.request(op, fields, now)
        if op == "trust_request" or (op == "trust_respond" and fields.get("approve")):
            self.consent.give(key)
        elif op == "untrust" or key not in self.peers:
            self._remove_peer(key, reason="untrusted here")
            self.consent.withdraw(key)
        request_id = self.consent.queue(key, op, fields, now)
        if self.joined and not self.registry_online:
            self.events.append(RequestDone(request_id, {"ok": True, "state": QUEUED}))
        return request_id

    # -- inputs: network -----------------------------------------------------------

    def receive_control(self, data: bytes, now: float, source: Endpoint | None = None) -> None:
        """A 0x50, 0x52 or 0x54 datagram from a registry or relay address (None: the
        current registry)."""
        if source is None or not self.relays.receive(data, source, now):
            for item in self.link.receive(data, now, source):
                self._on_link(item, now)
        self._after_relays(now)

    def device_reported(self, events: Iterable[Event], now: float) -> None:
        """The device's events since the last call (hand each once, before draining the
        core): a peer's endpoint that moved, as its path's `ROAMING` let it, feeds the
        path table."""
        self.paths.device_reported(events, now)
        self._ask_rounds(now)

    # -- inputs: timer -------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` is due next."""
        deadlines = [self.link.next_timer(), self._next_register_s, self.relays.next_timer()]
        if self._tickets is None:
            deadlines.append(self._tickets_due_s)
        deadlines.append(self.paths.next_timer())
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Retries, the heartbeat, probes and path checks that are due."""
        for item in self.link.handle_timer(now):
            self._on_link(item, now)
        if self._next_register_s is not None and now >= self._next_register_s:
            self._next_register_s = now + REGISTER_INTERVAL_S
            self._register(now)
        self.paths.handle_timer(now)
        self._ask_rounds(now)
        self.relays.set_active(self.paths.any_relayed(), now)
        self.relays.handle_timer(now)
        self._after_relays(now)

    # -- outputs -------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Whether datagrams or events wait."""
        return bool(
            self.events or self.link.outgoing or self.paths.has_output or self.relays.outgoing
        )

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        """Control datagrams for the registry and punch openers for peers' candidates,
        in order; the list is handed over."""
        out, self.link.outgoing = self.link.outgoing, []
        if self.relays.outgoing:
            out += self.relays.outgoing
            self.relays.outgoing = []
        return out + self.paths.take_openers()

    # -- the registry link -----------------------------------------------------------

    def _register(self, now: float) -> None:
        if self.link.registry_key is None:
            # Started from the cache with no pinned key (registry.pub was removed).
            self.link.fetch_key(now)
            return
        fields: dict[str, Any] = {"hostname": self.options.hostname, "tags": self.options.tags}
        if self.options.join_key is not None and not self.admitted:
            fields["join_key"] = self.options.join_key
        request_id = self.link.request("register", {**fields, "lan": self.lan_endpoints}, now)
        self._internal[request_id] = "register"
        self.link.keep_others_open()

    def network_changed(self, lan_endpoints: list[str], now: float) -> None:
        """This host's addresses or routes changed (a roam, a new LAN, a link back up):
        register at once from wherever we are now, and ask for a probe round with every
        peer, whose NATs may filter our new address until both sides punch again."""
        self.lan_endpoints = lan_endpoints
        if not self.joined:
            return
        self._rehandshake_after_register = True
        self._reregister(now)
        self._punch_again(now)

    def _punch_again(self, now: float) -> None:
        """Our NAT mapping, and so every peer's view of our endpoint, changed: back to the
        relay with each peer, and a probe round with each."""
        self.paths.network_changed(now)
        self._ask_rounds(now)

    def _ask_rounds(self, now: float) -> None:
        """Ask the registry for the probe rounds the path manager wants."""
        for key in self.paths.take_rounds():
            self._request("connect", {"peer": encode_key(key)}, now)

    def _on_relay_notice(self, now: float) -> None:
        """The relay does not know our address any more (our NAT mapping changed):
        register again at once, at most every REREGISTER_MIN_S."""
        if self.joined and now >= self._reregister_at_s:
            self._reregister(now)

    def _reregister(self, now: float) -> None:
        """Register now, outside the heartbeat (which starts again from here)."""
        self._reregister_at_s = now + REREGISTER_MIN_S
        self._next_register_s = now + REGISTER_INTERVAL_S
        self._register(now)

    def _request(self, op: str, fields: dict[str, Any], now: float) -> None:
        if self.link.registry_key is not None:
            self._internal[self.link.request(op, fields, now)] = op

    def _on_link(self, item: LinkInput, now: float) -> None:
        if isinstance(item, Push):
            self._on_push(item.message, now)
        elif isinstance(item, KeyAnswer):
            self._on_key(item.key, now)
        elif isinstance(item, Reply):
            self.consent.answered(item.request_id, item.message)
            op = self._internal.pop(item.request_id, None)
            if op is None:
                self._on_call_reply(item.request_id, item.message)
            elif item.message.get("ok"):
                self._on_reply(op, item.message, now)
            else:
                self._on_refusal(op, item.message, now)
        elif isinstance(item, RelaySourceUnknown):
            self._on_relay_notice(now)
        elif isinstance(item, SwitchedRegistry):
            self._on_switched(item, now)
        elif isinstance(item, MoveAsked):
            # Only if the replica that died is ours (another may have told us late).
            if self.replica is None or self.replica == item.gone:
                self._on_switched(self.link.switch_to(item.endpoint, now), now)
        elif item.request_id == KEY_FETCH_ID:
            self._on_key(None, now)
        else:
            op = self._internal.pop(item.request_id, None)
            if self.consent.unanswered(item.request_id):
                # Kept in the outbox: sent again after the next registration, which is
                # now (the registry may be gone: its silence then starts the retries
                # that bring the node back within a second of its return).
                self.events.append(RequestDone(item.request_id, {"ok": True, "state": QUEUED}))
                if self.registry_online and now >= self._reregister_at_s:
                    self._reregister(now)
            elif op is None:
                self.events.append(RequestFailed(item.request_id, *self._unreachable()))
            else:
                self._on_silence(op, now)

    def _on_call_reply(self, request_id: int, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            self.events.append(RequestDone(request_id, reply))
            return
        code, error, hint = refusal(reply)
        self.events.append(RequestFailed(request_id, code, error, hint))

    def _unreachable(self) -> tuple[str, str, str]:
        host, port = self.link.endpoint
        return (
            UNREACHABLE,
            f"no answer from the registry at {format_endpoint((host, port))}",
            "check the address, that UDP to it is allowed, and that the registry runs",
        )

    def _on_switched(self, switched: SwitchedRegistry, now: float) -> None:
        """Another replica takes our requests: it learns where we are at once (what
        waited was sent to it already, a registration among them if one waited)."""
        self.replica = None
        self.events.append(
            RegistrySwitched(format_endpoint(switched.endpoint), format_endpoint(switched.previous))
        )
        if self.joined and "register" not in self._internal.values():
            self._reregister(now)

    def _on_key(self, key: bytes | None, now: float) -> None:
        pinned = self.link.registry_key
        if pinned is None:
            if key is None:
                if not self.joined:
                    self._fail(*self._unreachable())
                return
            self.trust.registry_key = key
            self.link.use_key(key)
            self.events += [RegistryKeyPinned(key), TrustStateChanged()]
            self._register(now)
            return
        self._checking_key = False
        if key is None or key == pinned:
            if not self.joined:
                self._fail(*self._unreachable())
            return
        where = format_endpoint(self.link.endpoint)
        if self.options.registry_key is not None:
            failure = (
                "registry_key_mismatch",
                f"the registry at {where} has key {encode_key(key)}, not the one given "
                f"with --registry-key ({encode_key(pinned)})",
                "check the key the registry logged at start and pass that to --registry-key",
            )
        else:
            failure = (
                "registry_key_changed",
                f"the registry at {where} now has key {encode_key(key)}, not the pinned "
                f"{encode_key(pinned)}",
                "if that is expected, delete STATE_DIR/registry.pub or pass the new key "
                "with --registry-key",
            )
        if self.joined:
            self.registry_key_refused = f"{failure[1]}; {failure[2]}"
            self.events.append(RegistryKeyRefused(key, failure[1], failure[2]))
        else:
            self._fail(*failure)

    def _fail(self, code: str, error: str, hint: str) -> None:
        self.events.append(JoinFailed(code, error, hint))

    def _on_silence(self, op: str, now: float) -> None:
        """An internal request got no answer after every attempt."""
        self._abandon(op, now)
        if op != "register":
            self.events.append(RequestError(op, self._unreachable()[1]))
            return
        if self.registry_online or not self.joined:
            self.paths.registry_changed(False, now)
            if self.joined:
                self.registry_lost_s = now
                self.events.append(RegistryLost(self._unreachable()[1]))
        if not self._checking_key:
            # Silence from a pinned registry: does it answer with another key? (Asked
            # again at each retry: a registry that lost its state comes back silent.)
            self._checking_key = True
            self.link.fetch_key(now)
        if self.joined:
            lost = self.registry_lost_s
            recent = lost is not None and now - lost <= REGISTRY_RECENT_S
            self._next_register_s = now + (REGISTRY_RETRY_S if recent else REGISTER_INTERVAL_S)

    def _on_refusal(self, op: str, reply: dict[str, Any], now: float) -> None:
        code, error, hint = refusal(reply)
        if op == "register" and not self.joined:
            self._fail(code, error, hint)
            return
        self._abandon(op, now)
        self.events.append(RequestError(op, error))

    def _abandon(self, op: str, now: float) -> None:
        """An internal request that pages (trust list, tickets) failed: start over later."""
        if op == "trust_list":
            self._sync = None
        elif op == "relay_tickets":
            self._tickets = None
            self._tickets_due_s = now + TICKET_RETRY_S

    def _on_reply(self, op: str, reply: dict[str, Any], now: float) -> None:
        if op == "register":
            self._on_registered(reply, now)
        elif op == "trust_list":
            self._on_trust_page(reply, now)
        elif op == "relay_tickets":
            self._on_tickets(reply, now)

    def _on_registered(self, reply: dict[str, Any], now: float) -> None:
        try:
            ipv4 = IPv4Address(reply["ipv4"])
            network = IPv4Network(reply.get("network", "100.64.0.0/10"))
        except (KeyError, ValueError):
            self.events.append(RequestError("register", "the registry's reply has no address"))
            return
        if self.network is not None and (ipv4, network) != (self.ipv4, self.network):
            self.events.append(
                RequestError("register", f"the registry moved this node to {ipv4} in {network}")
            )
            return
        self._set_address(ipv4, network)
        self.admitted = True
        self.relays.update(relays_from_json(reply.get("relays")), now)
        replica = reply.get("replica")
        self.replica = replica if isinstance(replica, str) else None
        name = reply.get("network_name")
        name = name if isinstance(name, str) else None
        if name != self.network_name:
            self.network_name = name
            self.set_policy(self.policy)
        endpoint = reply.get("public_endpoint")
        previous_endpoint = self.public_endpoint
        self.public_endpoint = endpoint if isinstance(endpoint, str) else None
        if self.joined and previous_endpoint not in (None, self.public_endpoint):
            # Our router's public address changed with nothing changing on this host
            # (a new lease): what network_changed does, the registration aside.
            self.events.append(PublicEndpointChanged(previous_endpoint, self.public_endpoint))
            self._rehandshake_after_register = True
            self._punch_again(now)
        self._next_register_s = now + REGISTER_INTERVAL_S
        was_online = self.registry_online
        self.paths.registry_changed(True, now)
        self.registry_lost_s = None
        self.registry_key_refused = None
        if self._rehandshake_after_register:
            self._rehandshake_after_register = False
            for peer in self.peers.values():
                self.device.rehandshake(peer.public_key, now)
        self.consent.send_outbox(now)
        if not self.joined:
            self._take_address(ipv4, network)
            self.events.append(Joined(ipv4, network, self.public_endpoint))
            self.sync_trust(now)
        elif not was_online:
            self.events.append(RegistryRegained())
            self.sync_trust(now)
        elif reply.get("resync") is True:
            # The registry did not know our session (it restarted): pushes it had for us
            # meanwhile were not sent.
            self.sync_trust(now)

    # -- standalone relays -----------------------------------------------------------

    def _after_relays(self, now: float) -> None:
        """Tell the adapter where relayed datagrams go now, and fetch the tickets of our
        home relay when it changed, when peers changed, or before they expire."""
        events, self.relays.events = self.relays.events, []
        for item in events:
            if isinstance(item, TicketsPresented):
                # Handshakes the relay dropped for want of a ticket need not wait for
                # their retry.
                for key in self.peers:
                    if self.path_of(key) == "none":
                        self.device.rehandshake(key, now)
            elif isinstance(item, HomeRelayChanged):
                self._tickets = None
                self._tickets_due_s = now if item.home is not None else None
        home = self.relays.home
        if any(not isinstance(item, TicketsPresented) for item in events):
            relays = ",".join(sorted(format_endpoint(e) for e in self.relays.endpoints()))
            self.events.append(
                RelaysChanged(format_endpoint(home.endpoint) if home else None, relays)
            )
        if home is None or self._tickets is not None:
            return
        due = self._tickets_due_s
        if self._tickets_version != self.peers_version or (due is not None and now >= due):
            self._tickets = _TicketFetch(home, self.peers_version)
            self._request_tickets(0, now)

    def _request_tickets(self, offset: int, now: float) -> None:
        assert self._tickets is not None
        relay = encode_key(self._tickets.relay.key)
        self._request("relay_tickets", {"relay": relay, "offset": offset}, now)

    def _on_tickets(self, reply: dict[str, Any], now: float) -> None:
        fetch = self._tickets
        if fetch is None:
            return
        fetch.tickets += _strings(reply.get("tickets"))
        next_offset = reply.get("next_offset")
        if type(next_offset) is int and next_offset > 0:
            self._request_tickets(next_offset, now)
            return
        self._tickets = None
        self._tickets_version = fetch.peers_version
        self._tickets_due_s = now + TICKET_REFRESH_S
        self.relays.set_tickets(fetch.relay, fetch.tickets, now)

    # -- trust -----------------------------------------------------------------------

    def sync_trust(self, now: float) -> None:
        """Fetch the trust list (page by page) and make the device's peers match it."""
        if self._sync is None:
            self._sync = _TrustSync()
            self._request("trust_list", {"offset": 0}, now)

    def _on_trust_page(self, reply: dict[str, Any], now: float) -> None:
        sync = self._sync
        if sync is None:
            return
        sync.trusted += [n for n in reply.get("trusted", []) if isinstance(n, dict)]
        sync.incoming += [n for n in reply.get("incoming", []) if isinstance(n, dict)]
        next_offset = reply.get("next_offset")
        if type(next_offset) is int and next_offset > 0:
            self._request("trust_list", {"offset": next_offset}, now)
            return
        self._sync = None
        trusted = {message_key(node.get("public_key")): node for node in sync.trusted}
        for key in list(self.peers):
            if key not in trusted:
                self._remove_peer(key, reason="no longer trusted")
        for node in trusted.values():
            self._add_peer(node, now)
        for item in sync.incoming:
            asker = item.get("node")
            if isinstance(asker, dict):
                self._on_trust_requested(asker, str(item.get("message", "")), now)
        self.events.append(TrustSynced())

    def _on_push(self, message: dict[str, Any], now: float) -> None:
        op = message.get("op")
        node = message.get("node")
        if not isinstance(node, dict):
            return
        if op == "trust_requested":
            self._on_trust_requested(node, str(message.get("message", "")), now)
        elif op == "trust_changed":
            key = message_key(node.get("public_key"))
            if key is None:
                return
            name = str(node.get("hostname", ""))
            if message.get("trusted") is True:
                if self._add_peer(node, now):
                    self.events.append(TrustApproved(name, key))
            elif message.get("trusted") is False:
                self.events.append(TrustRevoked(name, key))
                self._remove_peer(key, reason="trust revoked")
                self.consent.withdraw(key)
        elif op == "punch":
            key = message_key(node.get("public_key"))
            if key is not None:
                self.paths.punch(key, message, self.lan_endpoints, self._overlay(), now)

    def _overlay(self) -> list[IPv4Network | IPv6Network]:
        """The overlay's networks (no peer's candidate may be in them)."""
        return [IPV6_PREFIX] + ([self.network] if self.network is not None else [])

    def _on_trust_requested(self, node: dict[str, Any], message: str, now: float) -> None:
        key = message_key(node.get("public_key"))
        if key is None or key in self.peers:
            return
        with contextlib.suppress(HostnameError):
            self.requesters[normalize_hostname(str(node.get("hostname", "")))] = key
        self.events.append(TrustRequested(str(node.get("hostname", "")), key, message))
        if approves(self.options.auto_approve, node, self.network_name):
            self.consent.give(key)
            self.consent.queue(
                key, "trust_respond", {"peer": encode_key(key), "approve": True}, now
            )

    # -- peers -----------------------------------------------------------------------

    def _add_peer(self, node: dict[str, Any], now: float) -> bool:
        """Add a peer the registry says we trust, if we consented and its addresses are
        sane; whether it is (now) a peer."""
        key = message_key(node.get("public_key"))
        name = str(node.get("hostname", ""))
        if key is None or key == self.device.public_key:
            return False
        refusal = self._refusal_of(node, key)
        if refusal is not None:
            self.refused[name] = refusal
            self.events.append(PeerRefused(name, key, refusal))
            return False
        hostname = normalize_hostname(name)
        self.refused.pop(hostname, None)
        tags = _strings(node.get("tags"))
        granted = _strings(node.get("granted_tags"))
        network_name = node.get("network_name")
        network_name = network_name if isinstance(network_name, str) else None
        if self.trust.pins.get(hostname) != key:
            self.trust.pin_peer(hostname, key)
            self.events.append(TrustStateChanged())
        existing = self.peers.get(key)
        if existing is not None:
            if existing.hostname != hostname:
                self.peers_version += 1
            existing.hostname, existing.tags = hostname, tags
            existing.granted_tags, existing.network_name = granted, network_name
            self._apply_policy(existing)
            return True
        peer = TrustedPeer(
            hostname=hostname,
            public_key=key,
            ipv4=IPv4Address(node["ipv4"]),
            ipv6=ipv6_for_key(key),
            tags=tags,
            granted_tags=granted,
            network_name=network_name,
        )
        self.peers[key] = peer
        self.peers_version += 1
        self.device.add_peer(
            key,
            allowed_ips=[
                ipaddress.ip_network(f"{peer.ipv4}/32"),
                ipaddress.ip_network(f"{peer.ipv6}/128"),
            ],
            endpoint=RelayEndpoint(key),
            persistent_keepalive_s=RELAY_KEEPALIVE_S,
            now=now,
        )
        self.paths.add(peer, now)
        self._apply_policy(peer)
        self.events.append(PeerAdded(hostname, key, peer.ipv4))
        return True

    def set_policy(self, policy: Policy) -> None:
        """Apply a port policy to every peer (and to those added later)."""
        self.policy = policy
        for peer in self.peers.values():
            self._apply_policy(peer)

    def _apply_policy(self, peer: TrustedPeer) -> None:
        same_network = self.network_name is not None and peer.network_name == self.network_name
        identity = PeerIdentity(peer.hostname, tuple(peer.granted_tags), same_network)
        self.device.set_packet_filter(peer.public_key, packet_filter(self.policy, identity))

    def _refusal_of(self, node: dict[str, Any], key: bytes) -> str | None:
        """Why the node the registry offered cannot be a peer, or None if it can."""
        if key not in self.trust.consented:
            return "this node never asked for or approved that trust"
        try:
            hostname = normalize_hostname(str(node.get("hostname", "")))
            ipv4 = IPv4Address(node.get("ipv4"))
        except (HostnameError, ValueError):
            return "the registry gave no valid hostname and address"
        pinned = self.trust.pins.get(hostname)
        if pinned is not None and pinned != key:
            return f"{hostname} is pinned to key {encode_key(pinned)}"
        if self.network is None or ipv4 not in self.network or ipv4 == self.ipv4:
            return f"{ipv4} is not a peer address of the network {self.network}"
        taken = [p for p in self.peers.values() if p.ipv4 == ipv4 and p.public_key != key]
        if taken:
            return f"{ipv4} belongs to {taken[0].hostname}"
        return None

    def _remove_peer(self, key: bytes, *, reason: str) -> None:
        peer = self.peers.pop(key, None)
        if peer is None:
            return
        self.peers_version += 1
        self.paths.remove(key)
        self.device.remove_peer(key)
        self.events.append(PeerRemoved(peer.hostname, key, reason))

    # -- views -----------------------------------------------------------------------

    def path_of(self, key: bytes) -> str:
        """A peer's path: 'direct', 'relay' or 'none' (no session yet)."""
        return self.paths.path_of(key)

    def names(self) -> dict[str, tuple[IPv4Address, IPv6Address]]:
        """Hostname -> addresses of every trusted peer, for the DNS responder."""
        return {p.hostname: (p.ipv4, p.ipv6) for p in self.peers.values()}

    def find_peer(self, text: str) -> TrustedPeer | None:
        """A trusted peer by hostname (with or without .pilot), virtual IP or key."""
        text = text.strip()
        name = text.lower().removesuffix(".pilot")
        for peer in self.peers.values():
            if text == encode_key(peer.public_key) or name in (
                peer.hostname,
                str(peer.ipv4),
                str(peer.ipv6),
            ):
                return peer
        return None

    def describe_peer(self, peer: TrustedPeer) -> dict[str, Any]:
        """One row of `pilotif peers` (times on the core's clock)."""
        state = self.device.peer(peer.public_key)
        endpoint = state.endpoint if state else None
        return {
            "hostname": peer.hostname,
            "ipv4": str(peer.ipv4),
            "ipv6": str(peer.ipv6),
            "public_key": encode_key(peer.public_key),
            "tags": peer.tags,
            "trusted": True,
            "path": self.path_of(peer.public_key),
            "path_state": str(self.paths.state(peer.public_key)),
            "endpoint": format_endpoint(endpoint) if isinstance(endpoint, tuple) else None,
            "last_handshake_s": state.last_handshake_s if state else None,
            "rx_bytes": state.rx_bytes if state else 0,
            "tx_bytes": state.tx_bytes if state else 0,
            "policy_denied": state.policy_denied if state else 0,
        }

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

    def status(self) -> dict[str, Any]:
        """The node part of `pilotif status`."""
        key = self.link.registry_key
        return {
            "hostname": self.options.hostname,
            "ipv4": str(self.ipv4) if self.ipv4 else None,
            "ipv6": str(self.ipv6),
            "registry": format_endpoint(self.link.endpoint),
            "registry_replica": self.replica,
            "registry_replicas": [format_endpoint(e) for e in self.link.endpoints],
            "registry_key": encode_key(key) if key else None,
            "registry_online": self.registry_online,
            "registry_lost_s": self.registry_lost_s,
            "registry_key_refused": self.registry_key_refused,
            "public_endpoint": self.public_endpoint,
            "lan_endpoints": self.lan_endpoints,
            "nat": self.nat_type(),
            "refused_peers": self.refused,
            "control_dropped": self.link.dropped,
            "candidates_refused": self.paths.candidates_refused,
            "relays": self.relays.describe(),
        }


def _strings(value: object) -> list[str]:
    """The strings of a list from a message ([] for anything else)."""
    return [str(item) for item in value if isinstance(item, str)] if isinstance(value, list) else []
