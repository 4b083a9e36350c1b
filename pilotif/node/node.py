"""A registry-joined node: registration and heartbeat, trust, trusted peers as WireGuard
peers, and the path to each (relay first, direct once a probe gets through).

The daemon owns the sockets and the overlay device; this class decides which peers the
device has and where their packets go, and answers the CLI's trust and peer commands.
"""

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pilotif.identity import HostnameError, ipv6_for_key, normalize_hostname
from pilotif.keys import InvalidKeyError, decode_key, encode_key
from pilotif.logs import log_event
from pilotif.node.icmp import echo_request_packet
from pilotif.node.pins import PinStore
from pilotif.node.registry_link import (
    RegistryError,
    RegistryKeyMismatch,
    RegistryLink,
    RegistryUnreachable,
)
from pilotif.observe.events import Publish, no_publish
from pilotif.overlay.device import Device
from pilotif.overlay.events import Endpoint
from pilotif.overlay.peer import Peer
from pilotif.registry.wire import parse_endpoint

RELAY_HOST = "relay"
"""The endpoint host of a peer reached through the registry's relay."""
REGISTER_INTERVAL_S = 20.0
PROBE_INTERVAL_S = 0.2
PROBE_DURATION_S = 5.0
DIRECT_PATH_TIMEOUT_S = 5.0
PATH_CHECK_AFTER_S = 1.0
"""Unanswered data this old on a direct path makes us ask the peer for an echo."""
REPROBE_INTERVAL_S = 30.0


@dataclass
class TrustedPeer:
    """What the node knows of a peer it trusts."""

    hostname: str
    public_key: bytes
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    tags: list[str]
    relay_slot: int
    candidates: list[Endpoint] = field(default_factory=list)
    probe_until_s: float = 0.0
    next_probe_s: float = 0.0
    reprobe_at_s: float | None = None
    next_path_check_s: float = 0.0
    relay_hold_until_s: float = 0.0
    """After a direct path failed: stay on the relay until the next probe round."""


def path_of(device: Device, key: bytes) -> str:
    """A peer's path: 'direct', 'relay' or 'none' (no session yet)."""
    state = device.peer(key)
    if state is None or state.current is None or state.endpoint is None:
        return "none"
    return "relay" if state.endpoint[0] == RELAY_HOST else "direct"


@dataclass
class NodeOptions:
    """How `up` joins a registry."""

    registry: Endpoint
    hostname: str
    tags: list[str]
    registry_key: bytes | None
    auto_approve: str | None
    """None (ask), "all", or "tag:NAME"."""
    accept_dns: bool = True
    """Point the system resolver at our DNS responder for `.pilot` names."""


class Node:
    """The node side of the control plane; see the module docstring."""

    def __init__(
        self,
        options: NodeOptions,
        device: Device,
        link: RegistryLink,
        pins: PinStore,
        lan_endpoints: list[str],
    ) -> None:
        self.options = options
        self.device = device
        self.link = link
        self.pins = pins
        self.lan_endpoints = lan_endpoints
        self.ipv4: ipaddress.IPv4Address | None = None
        self.ipv6 = ipv6_for_key(device.public_key)
        self.network: ipaddress.IPv4Network | None = None
        self.public_endpoint: str | None = None
        self.registry_online = False
        self.peers: dict[bytes, TrustedPeer] = {}
        self.peers_version = 0
        """Bumped whenever a peer is added or removed (the DNS table follows it)."""
        self.pin_conflicts: dict[str, dict[str, str]] = {}
        self._slots: dict[int, bytes] = {}
        self._next_register_s: float | None = None
        """Set on the first tick: `up` has just registered, the heartbeat follows."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._path_checks = 0
        device.roam_filter = self._may_roam
        self.publish: Publish = no_publish
        """Where trust, registry and path events go (the daemon sets its event bus)."""

    # -- registration --------------------------------------------------------------

    async def register(self) -> dict[str, Any]:
        """Register (also the heartbeat); raises RegistryError on refusal."""
        if self.link.registry_key is None:
            key = await self.link.fetch_key()
            self.pins.pin_registry(key)
            self.link.use_key(key)
            log_event("registry_key_pinned", key=encode_key(key))
        try:
            reply = await self.link.call(
                "register",
                hostname=self.options.hostname,
                tags=self.options.tags,
                lan=self.lan_endpoints,
            )
        except RegistryUnreachable:
            self.registry_online = False
            await self._check_registry_pin()
            raise
        self.registry_online = True
        self.ipv4 = ipaddress.IPv4Address(reply["ipv4"])
        self.network = ipaddress.IPv4Network(reply.get("network", "100.64.0.0/10"))
        self.public_endpoint = reply.get("public_endpoint")
        return reply

    async def _check_registry_pin(self) -> None:
        """After silence from a pinned registry: does it now use another key?"""
        pinned = self.link.registry_key
        if pinned is None:
            return
        try:
            key = await self.link.fetch_key()
        except RegistryUnreachable:
            return
        if key == pinned:
            return
        where = f"{self.link.endpoint[0]}:{self.link.endpoint[1]}"
        if self.options.registry_key is not None:
            raise RegistryKeyMismatch(
                "registry_key_mismatch",
                f"the registry at {where} has key {encode_key(key)}, not the one given "
                f"with --registry-key ({encode_key(pinned)})",
                "check the key the registry logged at start and pass that to --registry-key",
            )
        raise RegistryKeyMismatch(
            "registry_key_changed",
            f"the registry at {where} now has key {encode_key(key)}, not the pinned "
            f"{encode_key(pinned)}",
            f"if that is expected, delete {self.pins.registry_pin_path} "
            "or pass the new key with --registry-key",
        )

    async def sync_trust(self, now: float) -> None:
        """Fetch the trust list and make the device's peers match it."""
        reply = await self.trust_list()
        trusted = {self._key_of(node): node for node in reply.get("trusted", [])}
        for key in list(self.peers):
            if key not in trusted:
                self._remove_peer(key, reason="no longer trusted")
        for node in trusted.values():
            self._add_peer(node, now)
        for item in reply.get("incoming", []):
            self._on_trust_requested(item.get("node", {}), str(item.get("message", "")))

    async def trust_list(self) -> dict[str, list[Any]]:
        """Every page of the registry's trust list, joined."""
        joined: dict[str, list[Any]] = {"trusted": [], "incoming": [], "outgoing": []}
        offset: int | None = 0
        while offset is not None:
            reply = await self.link.call("trust_list", offset=offset)
            for name, items in joined.items():
                items.extend(reply.get(name, []))
            next_offset = reply.get("next_offset")
            offset = next_offset if isinstance(next_offset, int) and next_offset > offset else None
        return joined

    def tick(self, now: float) -> None:
        """Called about every PROBE_INTERVAL_S: heartbeat, probes, path fallback."""
        if self._next_register_s is None:
            self._next_register_s = now + REGISTER_INTERVAL_S
        elif now >= self._next_register_s:
            self._next_register_s = now + REGISTER_INTERVAL_S
            self._spawn(self._heartbeat(now))
        for peer in self.peers.values():
            self._tick_peer(peer, now)

    async def _heartbeat(self, now: float) -> None:
        was_online = self.registry_online
        try:
            await self.register()
        except RegistryError as error:
            if was_online:
                log_event("registry_lost", error=str(error))
                self.publish("registry_lost", error=str(error))
            return
        if not was_online:
            log_event("registry_regained", ipv4=str(self.ipv4))
            self.publish("registry_regained")
            await self.sync_trust(now)

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- pushes ---------------------------------------------------------------------

    def handle_push(self, message: dict[str, Any], now: float) -> None:
        """A push from the registry (trust_requested, trust_changed, punch)."""
        op = message.get("op")
        node = message.get("node")
        if not isinstance(node, dict):
            return
        if op == "trust_requested":
            self._on_trust_requested(node, str(message.get("message", "")))
        elif op == "trust_changed":
            if message.get("trusted"):
                log_event("trust_established", peer=node.get("hostname"))
                self.publish("trust_approved", **_peer_fields(node))
                self._add_peer(node, now)
                self.request_connect(self._key_of(node))
            else:
                log_event("trust_revoked", peer=node.get("hostname"))
                self.publish("trust_revoked", **_peer_fields(node))
                self._remove_peer(self._key_of(node), reason="trust revoked")
        elif op == "punch":
            self._on_punch(node, message.get("candidates", []), now)

    def _on_trust_requested(self, node: dict[str, Any], message: str) -> None:
        hostname = str(node.get("hostname", ""))
        log_event("trust_requested", peer=hostname, message=message)
        self.publish("trust_requested", **_peer_fields(node), message=message)
        policy = self.options.auto_approve
        tags = [str(t) for t in node.get("tags", [])]
        if policy == "all" or (policy is not None and policy.removeprefix("tag:") in tags):
            self._spawn(self._approve(self._key_of(node)))

    async def _approve(self, key: bytes) -> None:
        try:
            await self.link.call("trust_respond", peer=encode_key(key), approve=True)
        except RegistryError as error:
            log_event("auto_approve_failed", error=str(error))

    def request_connect(self, key: bytes) -> None:
        """Ask the registry to have us and a trusted peer punch towards each other."""
        self._spawn(self._connect(key))

    async def _connect(self, key: bytes) -> None:
        try:
            await self.link.call("connect", peer=encode_key(key))
        except RegistryError as error:
            log_event("connect_failed", peer=encode_key(key), error=str(error))

    def _on_punch(self, node: dict[str, Any], candidates: list[Any], now: float) -> None:
        peer = self.peers.get(self._key_of(node))
        if peer is None:
            return
        endpoints = []
        for text in candidates:
            try:
                endpoints.append(parse_endpoint(str(text)))
            except ValueError:
                continue
        peer.candidates = endpoints
        peer.relay_hold_until_s = 0.0
        peer.probe_until_s = now + PROBE_DURATION_S
        peer.next_probe_s = now
        self.device.initiate_handshake(peer.public_key, now)
        self._tick_peer(peer, now)

    # -- peers and paths ------------------------------------------------------------

    def _key_of(self, node: dict[str, Any]) -> bytes:
        """The node object's key, or b"" when it has none that decodes."""
        try:
            return decode_key(str(node.get("public_key", "")))
        except InvalidKeyError:
            return b""

    def _add_peer(self, node: dict[str, Any], now: float) -> None:
        key = self._key_of(node)
        try:
            hostname = normalize_hostname(str(node.get("hostname", "")))
            ipv4 = ipaddress.IPv4Address(node["ipv4"])
        except (HostnameError, KeyError, ValueError):
            return
        if not key or key == self.device.public_key:
            return
        pinned = self.pins.peer_key(hostname)
        if pinned is not None and pinned != key:
            self.pin_conflicts[hostname] = {
                "pinned_key": encode_key(pinned),
                "offered_key": encode_key(key),
            }
            log_event("peer_key_refused", peer=hostname, offered_key=encode_key(key))
            return
        self.pin_conflicts.pop(hostname, None)
        if pinned is None:
            self.pins.pin_peer(hostname, key)
        existing = self.peers.get(key)
        if existing is not None:
            existing.hostname = hostname
            existing.tags = [str(t) for t in node.get("tags", [])]
            return
        slot = len(self._slots) + 1
        while slot in self._slots:
            slot += 1
        self._slots[slot] = key
        peer = TrustedPeer(
            hostname=hostname,
            public_key=key,
            ipv4=ipv4,
            ipv6=ipv6_for_key(key),
            tags=[str(t) for t in node.get("tags", [])],
            relay_slot=slot,
        )
        self.peers[key] = peer
        self.peers_version += 1
        self.device.add_peer(
            key,
            allowed_ips=[
                ipaddress.ip_network(f"{peer.ipv4}/32"),
                ipaddress.ip_network(f"{peer.ipv6}/128"),
            ],
            endpoint=(RELAY_HOST, slot),
            persistent_keepalive_s=int(REGISTER_INTERVAL_S),
            now=now,
        )
        log_event("peer_added", peer=hostname, ipv4=str(ipv4))

    def _remove_peer(self, key: bytes, *, reason: str) -> None:
        peer = self.peers.pop(key, None)
        if peer is None:
            return
        self._slots.pop(peer.relay_slot, None)
        self.peers_version += 1
        self.device.remove_peer(key)
        log_event("peer_removed", peer=peer.hostname, reason=reason)
        self.publish("peer_down", peer=peer.hostname, public_key=encode_key(key), reason=reason)

    def _may_roam(self, state: Peer, source: Endpoint, now: float) -> bool:
        """Path choice on top of WireGuard roaming: a direct path is given up for the
        relay only once it has been silent for DIRECT_PATH_TIMEOUT_S (relayed packets
        still in flight do not undo a fresh direct path), and a failed direct path is
        not taken back before the next probe round."""
        peer = self.peers.get(state.public_key)
        if peer is None or state.endpoint is None:
            return True
        to_relay = source[0] == RELAY_HOST
        on_relay = state.endpoint[0] == RELAY_HOST
        if to_relay and not on_relay:
            silent_since = state.last_received_s
            return silent_since is None or now - silent_since > DIRECT_PATH_TIMEOUT_S
        if on_relay and not to_relay:
            return now >= peer.relay_hold_until_s
        return True

    def relay_key(self, slot: int) -> bytes | None:
        """The peer whose relay endpoint is `(RELAY_HOST, slot)`."""
        return self._slots.get(slot)

    def relay_endpoint(self, key: bytes) -> Endpoint | None:
        """The relay endpoint of a trusted peer."""
        peer = self.peers.get(key)
        return (RELAY_HOST, peer.relay_slot) if peer else None

    def _tick_peer(self, peer: TrustedPeer, now: float) -> None:
        state = self.device.peer(peer.public_key)
        if state is None:
            return
        direct = state.endpoint is not None and state.endpoint[0] != RELAY_HOST
        # Probe for the whole window even once direct here: the other side may not
        # have heard from us directly yet, and probes are what move it.
        if now < peer.probe_until_s and now >= peer.next_probe_s:
            peer.next_probe_s = now + PROBE_INTERVAL_S
            if state.current is None:
                self.device.initiate_handshake(peer.public_key, now)
            for candidate in peer.candidates:
                self.device.send_keepalive_to(peer.public_key, candidate, now)
        unanswered_s = None if state.unanswered_since_s is None else now - state.unanswered_since_s
        if (
            direct
            and unanswered_s is not None
            and unanswered_s >= PATH_CHECK_AFTER_S
            and now >= peer.next_path_check_s
            and self.ipv4 is not None
        ):
            # The peer's kernel answers an echo at once; plain data may need no answer.
            peer.next_path_check_s = now + PATH_CHECK_AFTER_S
            self._path_checks += 1
            packet = echo_request_packet(self.ipv4, peer.ipv4, self._path_checks)
            self.device.send_packet(packet, now)
        if direct and unanswered_s is not None and unanswered_s > DIRECT_PATH_TIMEOUT_S:
            log_event("path_relay", peer=peer.hostname, reason="direct path silent")
            self.publish(
                "path_changed",
                peer=peer.hostname,
                public_key=encode_key(peer.public_key),
                path="relay",
                endpoint=None,
                reason="direct path silent",
            )
            self.device.set_endpoint(peer.public_key, (RELAY_HOST, peer.relay_slot))
            peer.reprobe_at_s = now + REPROBE_INTERVAL_S
            peer.relay_hold_until_s = peer.reprobe_at_s
        if peer.reprobe_at_s is not None and now >= peer.reprobe_at_s and not direct:
            peer.reprobe_at_s = now + REPROBE_INTERVAL_S
            self.request_connect(peer.public_key)

    def names(self) -> dict[str, tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
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

    # -- CLI commands ----------------------------------------------------------------

    async def command(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        """Answer a CLI command that needs the registry or the peer list."""
        command = request.get("command")
        try:
            if command == "peers":
                return {"ok": True, "peers": [self.describe_peer(p) for p in self.peers.values()]}
            if command == "find":
                reply = await self.link.call("lookup", query=str(request.get("query", "")))
                return {"ok": True, "nodes": reply.get("nodes", [])}
            if command in ("trust", "pending"):
                return {"ok": True, **(await self.trust_list())}
            key = await self._resolve_key(str(request.get("peer", "")))
            if command == "handshake":
                reply = await self.link.call(
                    "trust_request", peer=encode_key(key), message=str(request.get("message", ""))
                )
                return {"ok": True, "state": reply.get("state")}
            if command in ("approve", "reject"):
                reply = await self.link.call(
                    "trust_respond", peer=encode_key(key), approve=command == "approve"
                )
                return {"ok": True, "state": reply.get("state")}
            if command == "untrust":
                await self.link.call("untrust", peer=encode_key(key))
                self._remove_peer(key, reason="untrusted here")
                self.pins.unpin_peer(key)
                return {"ok": True, "state": "none"}
        except RegistryError as error:
            return {"ok": False, "error": str(error), "code": error.code, "hint": error.hint}
        return {"ok": False, "error": f"unknown command {command!r}", "code": "bad_command"}

    async def _resolve_key(self, text: str) -> bytes:
        """A peer's key from a hostname, virtual IP or key: local peers first, then the
        registry."""
        peer = self.find_peer(text)
        if peer is not None:
            return peer.public_key
        reply = await self.link.call("lookup", query=text.strip().removesuffix(".pilot"))
        nodes = reply.get("nodes", [])
        if len(nodes) != 1:
            raise RegistryError(
                "peer_not_found" if not nodes else "ambiguous_peer",
                f"no single node matches {text!r} ({len(nodes)} found)",
                "use `pilotif find` to see who is registered",
            )
        key = self._key_of(nodes[0])
        if not key:
            raise RegistryError("peer_not_found", f"the registry gave no key for {text!r}")
        return key

    def describe_peer(self, peer: TrustedPeer) -> dict[str, Any]:
        """One line of `pilotif peers`."""
        state = self.device.peer(peer.public_key)
        endpoint = state.endpoint if state else None
        return {
            "hostname": peer.hostname,
            "ipv4": str(peer.ipv4),
            "ipv6": str(peer.ipv6),
            "public_key": encode_key(peer.public_key),
            "tags": peer.tags,
            "trusted": True,
            "path": path_of(self.device, peer.public_key),
            "endpoint": None if endpoint is None or endpoint[0] == RELAY_HOST else endpoint,
            "last_handshake_s": state.last_handshake_s if state else None,
            "rx_bytes": state.rx_bytes if state else 0,
            "tx_bytes": state.tx_bytes if state else 0,
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
        return {
            "hostname": self.options.hostname,
            "ipv4": str(self.ipv4) if self.ipv4 else None,
            "ipv6": str(self.ipv6),
            "registry": f"{self.link.endpoint[0]}:{self.link.endpoint[1]}",
            "registry_key": encode_key(self.link.registry_key) if self.link.registry_key else None,
            "registry_online": self.registry_online,
            "public_endpoint": self.public_endpoint,
            "lan_endpoints": self.lan_endpoints,
            "nat": self.nat_type(),
            "pin_conflicts": self.pin_conflicts,
        }


def _peer_fields(node: dict[str, Any]) -> dict[str, object]:
    """How events name a node the registry told us about."""
    return {"peer": str(node.get("hostname", "")), "public_key": str(node.get("public_key", ""))}
