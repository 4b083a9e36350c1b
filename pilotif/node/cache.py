"""What a node keeps so that it can start while its registry is away: its address, its UDP
port, and its trusted peers with their names, addresses, tags and last direct endpoint,
in STATE_DIR/node.json (written atomically, mode 0600, never through a symlink).

Trust itself (consents and pins) stays in peers.json (`pilotif.node.trust`): a cached peer
is added again only if the node still consents to it, whatever this file says.
"""

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Final

from pilotif.control.wire import format_endpoint, parse_endpoint
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


@dataclass(frozen=True)
class NodeSnapshot:
    """The node as it last ran joined to its registry."""

    ipv4: IPv4Address
    network: IPv4Network
    listen_port: int
    peers: tuple[CachedPeer, ...]
    network_name: str | None = None
    """The registry's network the node is a member of."""


class NodeCache:
    """STATE_DIR/node.json; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / NODE_CACHE_FILE
        self._saved: NodeSnapshot | None = None

    def load(self) -> NodeSnapshot | None:
        """The snapshot kept, None before the node first joined; StateFileError if the
        file is damaged."""
        text = read_state_file(self.path)
        if text is None:
            return None
        try:
            snapshot = _decode(json.loads(text))
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
    }


def _decode(document: dict[str, Any]) -> NodeSnapshot:
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
    )


def _optional_text(value: object) -> str | None:
    """A text field that older files lack (None)."""
    return None if value is None else str(value)
