"""What a node keeps so that it can start while its registry is away: its address, its UDP
port, its trusted peers with their names, addresses, tags and last direct endpoint, the
standalone relays the registry named and the tickets it gave us for our home relay, in
STATE_DIR/node.json (written atomically, mode 0600, never through a symlink).

Trust itself (consents and pins) stays in peers.json (`pilotif.node.trust`): a cached peer
is added again only if the node still consents to it, whatever this file says. A kept
ticket is dropped at load once the expiry it carries has passed; the relay checks it
anyway (the registry's MAC for that relay, the holder's key, the expiry), so a kept one
never lets a pair through that the registry's tickets would not.
"""

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Final

from pilotif.control.relay_info import RelayInfo, relay_from_json
from pilotif.control.tickets import ticket_claim
from pilotif.control.wire import format_endpoint, parse_endpoint
from pilotif.node.peers import TrustedPeer
from pilotif.util.files import StateFileError, read_state_file, write_private_file
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

NODE_CACHE_FILE: Final = "node.json"


@dataclass(frozen=True)
class CachedPeer:
    """A trusted peer as the node last knew it."""

    hostname: str
    public_key: bytes
    ipv4: IPv4Address
    tags: tuple[str, ...]
    endpoint: Endpoint | None
    """Its UDP endpoint when the path was direct, else None."""
    granted_tags: tuple[str, ...] = ()
    """The tags the registry's operator granted it (the port policy matches them)."""
    network_name: str | None = None

    @classmethod
    def of(cls, peer: TrustedPeer, endpoint: object) -> "CachedPeer":
        """`peer` as kept, with the device's endpoint for it if that is a UDP one."""
        return cls(
            peer.hostname,
            peer.public_key,
            peer.ipv4,
            tuple(peer.tags),
            endpoint if isinstance(endpoint, tuple) else None,
            tuple(peer.granted_tags),
            peer.network_name,
        )

    def registry_node(self) -> dict[str, Any]:
        """The peer as the registry describes a node (what the node adds peers from)."""
        return {
            "hostname": self.hostname,
            "public_key": encode_key(self.public_key),
            "ipv4": str(self.ipv4),
            "tags": list(self.tags),
            "granted_tags": list(self.granted_tags),
            "network_name": self.network_name,
        }


@dataclass(frozen=True)
class CachedTickets:
    """The tickets the registry gave us for one relay (our home when it gave them)."""

    relay: RelayInfo
    tickets: tuple[str, ...]

    def for_peers(self, peers: Collection[bytes]) -> "CachedTickets | None":
        """Only the tickets for `peers` (a node presents none for a peer it no longer
        trusts); None if that leaves none."""
        kept = tuple(t for t in self.tickets if (claim := ticket_claim(t)) and claim[0] in peers)
        return CachedTickets(self.relay, kept) if kept else None


@dataclass(frozen=True)
class NodeSnapshot:
    """The node as it last ran joined to its registry."""

    ipv4: IPv4Address
    network: IPv4Network
    listen_port: int
    peers: tuple[CachedPeer, ...]
    network_name: str | None = None
    """The registry's network the node is a member of."""
    relays: tuple[RelayInfo, ...] = ()
    """The standalone relays the registry named last."""
    tickets: CachedTickets | None = None
    """Our home relay's tickets (at load: those that have not expired)."""


class NodeCache:
    """STATE_DIR/node.json; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / NODE_CACHE_FILE
        self._saved: NodeSnapshot | None = None

    def load(self, wall_now: float | None = None) -> NodeSnapshot | None:
        """The snapshot kept, None before the node first joined; StateFileError if the
        file is damaged. Tickets that expired by `wall_now` (Unix seconds; default: the
        clock) are left out."""
        text = read_state_file(self.path)
        if text is None:
            return None
        wall_now = time.time() if wall_now is None else wall_now
        try:
            snapshot = _decode(json.loads(text), wall_now)
        except (ValueError, KeyError, TypeError, InvalidKeyError):
            raise StateFileError(
                f"{self.path} is not a pilotif node cache; delete it (the node then needs "
                "its registry to start, once)"
            ) from None
        self._saved = snapshot
        return snapshot

    def save(self, snapshot: NodeSnapshot) -> None:
        """Write the snapshot if it differs from the one on disk."""
        if snapshot == self._saved:
            return
        write_private_file(self.path, json.dumps(_encode(snapshot), indent=2) + "\n")
        self._saved = snapshot


def _encode(snapshot: NodeSnapshot) -> dict[str, Any]:
    return {
        "ipv4": str(snapshot.ipv4),
        "network": str(snapshot.network),
        "listen_port": snapshot.listen_port,
        "peers": [
            {
                "hostname": peer.hostname,
                "public_key": encode_key(peer.public_key),
                "ipv4": str(peer.ipv4),
                "tags": list(peer.tags),
                "endpoint": None if peer.endpoint is None else format_endpoint(peer.endpoint),
                "granted_tags": list(peer.granted_tags),
                "network_name": peer.network_name,
            }
            for peer in snapshot.peers
        ],
        "network_name": snapshot.network_name,
        "relays": [relay.to_json() for relay in snapshot.relays],
        "tickets": None
        if snapshot.tickets is None
        else {
            "relay": snapshot.tickets.relay.to_json(),
            "tickets": list(snapshot.tickets.tickets),
        },
    }


def _decode(document: dict[str, Any], wall_now: float) -> NodeSnapshot:
    port = document["listen_port"]
    if type(port) is not int or not 0 < port < 2**16:
        raise ValueError("listen_port")
    peers = tuple(
        CachedPeer(
            hostname=str(peer["hostname"]),
            public_key=decode_key(str(peer["public_key"])),
            ipv4=IPv4Address(peer["ipv4"]),
            tags=tuple(str(tag) for tag in peer["tags"]),
            endpoint=None if peer["endpoint"] is None else parse_endpoint(str(peer["endpoint"])),
            granted_tags=tuple(str(tag) for tag in peer.get("granted_tags", [])),
            network_name=_optional_text(peer.get("network_name")),
        )
        for peer in document["peers"]
    )
    return NodeSnapshot(
        IPv4Address(document["ipv4"]),
        IPv4Network(document["network"]),
        port,
        peers,
        _optional_text(document.get("network_name")),
        tuple(_relay(relay) for relay in document.get("relays", [])),
        _tickets(document.get("tickets"), wall_now),
    )


def _relay(document: object) -> RelayInfo:
    relay = relay_from_json(document) if isinstance(document, dict) else None
    if relay is None:
        raise ValueError("relay")
    return relay


def _tickets(document: dict[str, Any] | None, wall_now: float) -> CachedTickets | None:
    """The kept tickets that have not expired (None: none kept, or all expired)."""
    if document is None:
        return None
    relay, tickets = _relay(document["relay"]), document["tickets"]
    if not isinstance(tickets, list):
        raise TypeError("tickets")
    live = tuple(t for t in tickets if (claim := ticket_claim(t)) and claim[1] > wall_now)
    return CachedTickets(relay, live) if live else None


def _optional_text(value: object) -> str | None:
    """A text field that older files lack (None)."""
    return None if value is None else str(value)
