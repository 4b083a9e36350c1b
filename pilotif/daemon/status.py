"""What `pilotif status` shows and what the metrics scrape reads, built from the parts of a
running interface; monotonic times become wall-clock times here."""

import os
import time
from typing import Any

from pilotif.daemon.event_publisher import EventPublisher
from pilotif.daemon.parts import Parts
from pilotif.net.bind import endpoint_text, path_transport
from pilotif.observe import NodeSample, PeerSample
from pilotif.wg.keys import decode_key, encode_key


def wall_offset() -> float:
    """What to add to a monotonic time to get the wall-clock time."""
    return time.time() - time.monotonic()


def interface_status(parts: Parts) -> dict[str, Any]:
    """What `pilotif status` shows."""
    offset = wall_offset()
    device, bind = parts.device, parts.bind
    peers = []
    for peer in device.peers():
        latest = peer.last_handshake_s
        peers.append(
            {
                "public_key": encode_key(peer.public_key),
                "endpoint": peer.endpoint and endpoint_text(peer.endpoint),
                "transport": peer.endpoint and bind and path_transport(bind, peer.endpoint),
                "allowed_ips": [str(n) for n in peer.allowed_ips],
                "latest_handshake": None if latest is None else latest + offset,
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "persistent_keepalive": peer.persistent_keepalive_s,
                "preshared_key": any(peer.preshared_key),
            }
        )
    return {
        "interface": parts.interface,
        "public_key": encode_key(device.public_key),
        "listen_port": bind.port if bind else None,
        "addresses": [str(a) for a in parts.addresses],
        "mtu": parts.mtu,
        "pid": os.getpid(),
        "peers": peers,
        "drops": {str(reason): count for reason, count in device.drops.items()},
        "bind": dict(bind.counters) if bind else {},
        "transport": bind.transport() if bind else None,
        "offloads": {
            "tun": parts.tun_offloads,
            "tso_max_segments": parts.tso_max_segments,
            "udp": bind.status() if bind else None,
        },
        "node": _node_status(parts, offset),
        "userspace": parts.userspace() if parts.userspace is not None else None,
    }


def _node_status(parts: Parts, offset: float) -> dict[str, Any] | None:
    if parts.node is None:
        return None
    status = parts.node.status()
    lost = status.pop("registry_lost_s")
    status["registry_unreachable_since"] = None if lost is None else lost + offset
    return status


def with_wall_clock(reply: dict[str, Any]) -> dict[str, Any]:
    """A node command's reply with each peer's last handshake as a wall-clock time."""
    for peer in reply.get("peers", []):
        latest = peer.pop("last_handshake_s")
        peer["last_handshake"] = None if latest is None else latest + wall_offset()
    return reply


def with_transports(reply: dict[str, Any], parts: Parts) -> dict[str, Any]:
    """A node command's reply with each peer's transport now (`udp4`, `udp6`, `relay`,
    `tcp relay`, `tcp relay via proxy`; None without a path)."""
    bind = parts.bind
    for peer in reply.get("peers", []):
        state = parts.device.peer(decode_key(peer["public_key"])) if "public_key" in peer else None
        endpoint = state.endpoint if state is not None else None
        transport = None
        if endpoint is not None and bind is not None and peer.get("path") != "none":
            transport = path_transport(bind, endpoint)
        peer["transport"] = transport
    return reply


def path_of(parts: Parts, key: bytes) -> str:
    """How the peer with `key` is reached: the node says; a static peer is direct once
    it has an endpoint."""
    if parts.node is not None:
        return parts.node.path_of(key)
    peer = parts.device.peer(key)
    return "none" if peer is None or peer.current is None else "direct"


def metrics_sample(parts: Parts, publisher: EventPublisher) -> NodeSample:
    """The node's metrics now (called at scrape time)."""
    device, bind, node = parts.device, parts.bind, parts.node
    return NodeSample(
        peers=[
            PeerSample(
                name=publisher.peer_name(peer.public_key),
                path=path_of(parts, peer.public_key),
                rx_bytes=peer.rx_bytes,
                tx_bytes=peer.tx_bytes,
            )
            for peer in device.peers()
        ],
        handshakes=publisher.handshakes,
        drops={str(reason): count for reason, count in device.drops.items()},
        relay_rx_bytes=bind.counters["relay_rx_bytes"] if bind else 0,
        relay_tx_bytes=bind.counters["relay_tx_bytes"] if bind else 0,
        registry_online=node.registry_online() if node is not None else None,
    )
