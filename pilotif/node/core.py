"""The node side of the control plane, sans-IO: joining a registry, trust, trusted peers
as WireGuard peers of the overlay device, and the path to each.

Theory of operation (aioquic's QuicConnection is the model). The core has three kinds
of input, each taking `now` (seconds on the caller's monotonic clock):

- commands: `start` (join), `call` (a request for the registry on behalf of the CLI);
- the network: `receive_control(data, now)` for every 0x50/0x52 datagram from the
  registry's address, and `device_reported(events, now)`: what the device reported
  (an endpoint that roamed, as the path's `Roaming` let it; the device never calls back);
- the timer: `handle_timer(now)` at or after `get_timer()`.

Its outputs: `datagrams_to_send()` (control datagrams for the registry), `take_openers()`
(punch openers, each with its hop limit), the overlay
device it steers (peers, endpoints, probes: the caller drains the device as usual),
`events` (frozen dataclasses of `pilotif.node.events`) and `get_timer()`. No asyncio,
no sockets, no clock, no files: `trust` is the in-memory record the caller loads and
saves (on TrustStateChanged).

The core coordinates parts with one job each: the registry link
(`pilotif.node.registry_link`) and the registration over it (`pilotif.node.registration`:
the heartbeat, the registry's key, online or lost), the path manager
(`pilotif.node.path_manager`: every peer's path, after the table of `pilotif.node.paths`),
consent, the trust outbox and the trust list (`pilotif.node.consent`), and the standalone
relays with their tickets (`pilotif.node.relays`). The core keeps the node's address and
its trusted peers, and routes the link's answers to the part that asked.
"""

import contextlib
import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any

from pilotif.control.identity import IPV6_PREFIX, HostnameError, ipv6_for_key, normalize_hostname
from pilotif.control.wire import format_endpoint
from pilotif.node.cache import CachedPeer, CachedTickets, NodeSnapshot
from pilotif.node.consent import QUEUED, TRUST_OPS, Consent, TrustSync, approves
from pilotif.node.events import (
    EventSink,
    Joined,
    JoinFailed,
    NodeEvent,
    PeerAdded,
    PeerRefused,
    PeerRemoved,
    RegistryRegained,
    RelaysChanged,
    RelayTicketsTaken,
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
from pilotif.node.other_family import FAMILY_ENDPOINT_OP
from pilotif.node.path_manager import RELAY_KEEPALIVE_S, Opener, PathManager
from pilotif.node.path_mtu import PathMtuProber
from pilotif.node.peers import TrustedPeer, refusal_of
from pilotif.node.policy import PeerIdentity, Policy, packet_filter
from pilotif.node.registration import NodeOptions, Registration
from pilotif.node.registry_link import (
    KEY_FETCH_ID,
    Errands,
    KeyAnswer,
    LinkInput,
    MoveAsked,
    Push,
    RegistryLink,
    RelaySourceUnknown,
    Reply,
    SwitchedRegistry,
    message_key,
    message_strings,
    refusal,
)
from pilotif.node.relays import HomeRelayChanged, Relays, Tickets, TicketsPresented
from pilotif.node.trust import TrustRecord
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint, Event, RelayEndpoint
from pilotif.wg.keys import encode_key


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
        self.device = device
        self.trust = trust
        self.link = RegistryLink(
            device.local.private_key,
            registry,
            trust.registry_key,
            first_counter=first_counter,
            first_id=first_request_id,
            replicas=registry_replicas,
        )
        self._sink = EventSink()
        self._errands = Errands(self.link)
        self.registration = Registration(
            options, self.link, self._errands, trust, self._sink, lan_endpoints
        )
        """The heartbeat, the registry's key, and what the registry says of us."""
        self.relays = Relays(device.local.private_key)
        """The standalone relays the registry names (none: it relays itself)."""
        self._tickets = Tickets(self.relays, self._errands)
        self.paths = PathManager(device, self._sink)
        self.path_mtu = PathMtuProber(device, self._sink)
        """Every trusted peer's path (relay or direct), probes and punching."""
        self._lan_endpoints = list(lan_endpoints)
        self.mapped_endpoint: str | None = None
        """The 'ip:port' our gateway forwards to our UDP port (NAT-PMP, PCP or UPnP),
        reported to the registry as our first candidate after the public one."""
        self.consent = Consent(trust, self.link, self._sink)
        """This node's consent to trust, and the outbox of its trust requests."""
        self._trust_sync = TrustSync(self._errands)
        self.ipv4: IPv4Address | None = None
        self.ipv6 = ipv6_for_key(device.public_key)
        self.network: IPv4Network | None = None
        self.network_name: str | None = None
        """The registry's network we are a member of (a join key put us there)."""
        self.policy = Policy()
        """The port policy applied to every peer's packets (`set_policy`)."""
        self.joined = False
        self.peers: dict[bytes, TrustedPeer] = {}
        self.peers_version = 0
        """Bumped whenever a peer is added or removed (the DNS table follows it)."""
        self.refused: dict[str, str] = {}
        """Hostname -> why the registry's offer of that peer was refused (the latest)."""
        self.requesters: dict[str, bytes] = {}
        """Hostname -> key of nodes that asked us for trust (for `approve NAME` while
        the registry is away)."""

    @property
    def events(self) -> list[NodeEvent]:
        """What happened, in order (frozen dataclasses of `pilotif.node.events`): take
        the list and set a new one."""
        return self._sink.items

    @events.setter
    def events(self, events: list[NodeEvent]) -> None:
        self._sink.items = events

    @property
    def options(self) -> NodeOptions:
        """How `up` joins a registry (the registration's)."""
        return self.registration.options

    @property
    def registry_online(self) -> bool:
        """Whether the registry answers (since our last registration)."""
        return self.paths.registry_online

    # -- inputs: commands ----------------------------------------------------------

    def resume(self, snapshot: NodeSnapshot, now: float) -> None:
        """Start from what the node kept, the registry being unreachable (`start` said
        so): its address, and its cached peers that it still consents to, each tried at
        once at its last direct endpoint, or through the relays it kept (with the tickets
        it kept for its home relay). Registering goes on in the background."""
        self._take_address(snapshot.ipv4, snapshot.network)
        self.network_name = snapshot.network_name
        self.paths.registry_changed(False, now)
        self.registration.resumed(now)
        added = 0
        for cached in snapshot.peers:
            if not self._add_peer(cached.registry_node(), now):
                continue
            added += 1
            if cached.endpoint is not None:
                self.paths.cached_endpoint(cached.public_key, cached.endpoint, now)
        self._tickets.kept = tickets = snapshot.tickets and snapshot.tickets.for_peers(self.peers)
        self.relays.update(list(snapshot.relays), now)
        kept = len(tickets.tickets) if tickets is not None else 0
        self.events.append(StartedWithoutRegistry(snapshot.ipv4, added, len(snapshot.relays), kept))

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
            peers.append(CachedPeer.of(peer, state.endpoint if state is not None else None))
        home, tickets = self.relays.home, self.relays.home_tickets()
        return NodeSnapshot(
            self.ipv4,
            self.network,
            listen_port,
            tuple(peers),
            self.network_name,
            self.relays.infos(),
            CachedTickets(home, tickets) if home is not None and tickets else None,
        )

    def start(self, now: float) -> None:
        """Join: learn the registry's key if none is pinned, then register."""
        self.registration.start(now)

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
        events = list(events)
        self.paths.device_reported(events, now)
        self.path_mtu.device_reported(events, now)
        self._ask_rounds(now)

    # -- inputs: timer -------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` is due next."""
        deadlines = [
            self.link.next_timer(),
            self.registration.next_timer(),
            self.relays.next_timer(),
            self._tickets.next_timer(self.registry_online),
            self.paths.next_timer(),
            self.path_mtu.next_timer(),
        ]
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Retries, the heartbeat, probes and path checks that are due."""
        for item in self.link.handle_timer(now):
            self._on_link(item, now)
        self.registration.handle_timer(now)
        self.paths.handle_timer(now)
        self.path_mtu.handle_timer(now)
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
        """Control datagrams for the registry and relays, in order; the list is handed
        over."""
        out, self.link.outgoing = self.link.outgoing, []
        if self.relays.outgoing:
            out += self.relays.outgoing
            self.relays.outgoing = []
        return out

    def take_openers(self) -> list[Opener]:
        """Punch openers for peers' candidates (each with its hop limit), in order; the
        list is handed over."""
        return self.paths.take_openers()

    # -- network changes and the registry's answers ----------------------------------

    def network_changed(self, lan_endpoints: list[str], now: float) -> None:
        """This host's addresses or routes changed (a roam, a new LAN, a link back up):
        register at once from wherever we are now, and ask for a probe round with every
        peer, whose NATs may filter our new address until both sides punch again."""
        self._lan_endpoints = list(lan_endpoints)
        self.registration.network_changed(self._reported(), now, joined=self.joined)
        if self.joined:
            self._punch_again(now)

    def port_mapped(self, endpoint: str | None, now: float) -> None:
        """Our gateway forwards `endpoint` to our UDP port now (None: no longer): the
        registry hears of it at once, and peers probe it at their next round."""
        if endpoint == self.mapped_endpoint:
            return
        self.mapped_endpoint = endpoint
        self.registration.lan_endpoints = self._reported()
        if self.link.registry_key is not None:
            # Also before joining: the registration on its way may not carry it (without
            # the key, the registration that follows the key's answer will).
            self.registration.register(now)

    def _reported(self) -> list[str]:
        """The candidates we report besides the public one: the mapped one, then LAN."""
        mapped = [self.mapped_endpoint] if self.mapped_endpoint is not None else []
        return mapped + [lan for lan in self._lan_endpoints if lan not in mapped]

    def carrier_changed(self, now: float, *, over_stream: bool) -> None:
        """The registry and relays now hear us over another transport (UDP, or a stream
        to them): register at once, so that they answer where we are. Our UDP towards
        peers did not move: their paths stay."""
        if self.joined:
            self.registration.carrier_changed(now, over_stream=over_stream)

    def _punch_again(self, now: float) -> None:
        """Our NAT mapping, and so every peer's view of our endpoint, changed: back to the
        relay with each peer, and a probe round with each."""
        self.paths.network_changed(now)
        self._ask_rounds(now)

    def _ask_rounds(self, now: float) -> None:
        """Ask the registry for the probe rounds the path manager wants."""
        for key in self.paths.take_rounds():
            self._errands.send("connect", {"peer": encode_key(key)}, now)

    def _on_link(self, item: LinkInput, now: float) -> None:
        if isinstance(item, Push):
            self._on_push(item.message, now)
        elif isinstance(item, KeyAnswer):
            self.registration.key_answer(item.key, now, joined=self.joined, source=item.source)
        elif isinstance(item, Reply):
            self.consent.answered(item.request_id, item.message)
            op = self._errands.pop(item.request_id)
            if op is None:
                self._on_call_reply(item.request_id, item.message)
            elif item.message.get("ok"):
                self._on_reply(op, item.message, now)
            else:
                self._on_refusal(op, item.message, now)
        elif isinstance(item, RelaySourceUnknown):
            # The relay does not know our address any more (our NAT mapping changed).
            if self.joined:
                self.registration.again(now)
        elif isinstance(item, SwitchedRegistry):
            self.registration.switched(item, now, joined=self.joined)
        elif isinstance(item, MoveAsked):
            self.registration.move_asked(item, now, joined=self.joined)
        elif item.request_id == KEY_FETCH_ID:
            self.registration.key_answer(None, now, joined=self.joined)
        else:
            op = self._errands.pop(item.request_id)
            if self.consent.unanswered(item.request_id):
                # Kept in the outbox: sent again after the next registration, which is
                # now (the registry may be gone: its silence then starts the retries
                # that bring the node back within a second of its return).
                self.events.append(RequestDone(item.request_id, {"ok": True, "state": QUEUED}))
                if self.registry_online:
                    self.registration.again(now)
            elif op is None:
                self.events.append(RequestFailed(item.request_id, *self.registration.unreachable()))
            else:
                self._on_silence(op, now)

    def _on_call_reply(self, request_id: int, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            self.events.append(RequestDone(request_id, reply))
            return
        code, error, hint = refusal(reply)
        self.events.append(RequestFailed(request_id, code, error, hint))

    def _on_silence(self, op: str, now: float) -> None:
        """An internal request got no answer after every attempt."""
        self._abandon(op, now)
        if op == FAMILY_ENDPOINT_OP:
            self.registration.other_family.silent()
        elif op != "register":
            self.events.append(RequestError(op, self.registration.unreachable()[1]))
        elif self.registration.silent(now, joined=self.joined, online=self.registry_online):
            self.paths.registry_changed(False, now)

    def _on_refusal(self, op: str, reply: dict[str, Any], now: float) -> None:
        code, error, hint = refusal(reply)
        if op == "register" and not self.joined:
            self.events.append(JoinFailed(code, error, hint))
            return
        if op == FAMILY_ENDPOINT_OP:
            self.registration.other_family.refused(reply)
            return
        self._abandon(op, now)
        self.events.append(RequestError(op, error))

    def _abandon(self, op: str, now: float) -> None:
        """An internal request that pages (trust list, tickets) failed: start over later."""
        if op == "trust_list":
            self._trust_sync.abandon()
        elif op == "relay_tickets":
            self._tickets.abandon(now)

    def _on_reply(self, op: str, reply: dict[str, Any], now: float) -> None:
        if op == "register":
            self._on_registered(reply, now)
        elif op == "trust_list":
            self._on_trust_page(reply, now)
        elif op == "relay_tickets":
            self._tickets.page(reply, now)
        elif op == FAMILY_ENDPOINT_OP:
            self.registration.other_family.answered(reply)

    def _on_registered(self, reply: dict[str, Any], now: float) -> None:
        address = (self.ipv4, self.network)
        done = self.registration.registered(reply, now, joined=self.joined, address=address)
        if done is None:
            return
        self._set_address(done.ipv4, done.network)
        self.relays.update(done.relays, now)
        if done.network_name != self.network_name:
            self.network_name = done.network_name
            self.set_policy(self.policy)
        if done.endpoint_moved:
            # What network_changed does, the registration aside.
            self._punch_again(now)
        was_online = self.registry_online
        self.paths.registry_changed(True, now)
        if done.rehandshake:
            for peer in self.peers.values():
                self.device.rehandshake(peer.public_key, now)
        self.consent.send_outbox(now)
        if not self.joined:
            self._take_address(done.ipv4, done.network)
            self.events.append(Joined(done.ipv4, done.network, self.registration.public_endpoint))
            self.sync_trust(now)
        elif not was_online:
            self.events.append(RegistryRegained())
            self.sync_trust(now)
        elif done.resync:
            self.sync_trust(now)

    # -- standalone relays -----------------------------------------------------------

    def _after_relays(self, now: float) -> None:
        """Tell the adapter where relayed datagrams go now, and fetch the tickets of our
        home relay when it changed, when peers changed, or before they expire."""
        events, self.relays.events = self.relays.events, []
        for item in events:
            if isinstance(item, TicketsPresented):
                self.events.append(
                    RelayTicketsTaken(
                        format_endpoint(item.relay.endpoint), len(self.relays.home_tickets())
                    )
                )
                # Handshakes the relay dropped for want of a ticket need not wait for
                # their retry.
                for key in self.peers:
                    if self.paths.path_of(key) == "none":
                        self.device.rehandshake(key, now)
            elif isinstance(item, HomeRelayChanged):
                self._tickets.home_changed(item.home, now)
        home = self.relays.home
        if any(not isinstance(item, TicketsPresented) for item in events):
            relays = ",".join(sorted(format_endpoint(e) for e in self.relays.endpoints()))
            self.events.append(
                RelaysChanged(format_endpoint(home.endpoint) if home else None, relays)
            )
        self._tickets.fetch_if_due(self.peers_version, now, registry_online=self.registry_online)

    # -- trust -----------------------------------------------------------------------

    def sync_trust(self, now: float) -> None:
        """Fetch the trust list (page by page) and make the device's peers match it."""
        self._trust_sync.start(now)

    def _on_trust_page(self, reply: dict[str, Any], now: float) -> None:
        sync = self._trust_sync.page(reply, now)
        if sync is None:
            return
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
                self.paths.punch(key, message, self._lan_endpoints, self._overlay(), now)

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
        refusal = refusal_of(node, key, self.trust, self.network, self.ipv4, self.peers.values())
        if refusal is not None:
            self.refused[name] = refusal
            self.events.append(PeerRefused(name, key, refusal))
            return False
        hostname = normalize_hostname(name)
        self.refused.pop(hostname, None)
        tags = message_strings(node.get("tags"))
        granted = message_strings(node.get("granted_tags"))
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
        self.path_mtu.add(peer, now)
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

    def _remove_peer(self, key: bytes, *, reason: str) -> None:
        peer = self.peers.pop(key, None)
        if peer is None:
            return
        self.peers_version += 1
        self.paths.remove(key)
        self.path_mtu.remove(key)
        self.device.remove_peer(key)
        self.events.append(PeerRemoved(peer.hostname, key, reason))

    # -- views -----------------------------------------------------------------------

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
            "path": self.paths.path_of(peer.public_key),
            "path_state": str(self.paths.state(peer.public_key)),
            "mtu": self.path_mtu.mtu_of(peer.public_key),
            "endpoint": format_endpoint(endpoint) if isinstance(endpoint, tuple) else None,
            "last_handshake_s": state.last_handshake_s if state else None,
            "rx_bytes": state.rx_bytes if state else 0,
            "tx_bytes": state.tx_bytes if state else 0,
            "policy_denied": state.policy_denied if state else 0,
        }

    def status(self) -> dict[str, Any]:
        """The node part of `pilotif status`."""
        return {
            "hostname": self.options.hostname,
            "ipv4": str(self.ipv4) if self.ipv4 else None,
            "ipv6": str(self.ipv6),
            **self.registration.describe(self.registry_online),
            "refused_peers": self.refused,
            "control_dropped": self.link.dropped,
            "candidates_refused": self.paths.candidates_refused,
            "relays": self.relays.describe(),
        }
