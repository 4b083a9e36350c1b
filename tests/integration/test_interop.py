"""pilotif speaks WireGuard: with wireguard-go and with itself, either side starts the
handshake, ping crosses over IPv4 and IPv6, and 10 MiB of TCP arrive intact each way, with
and without a preshared key; `status --json` describes the interface and the peer.
"""

import os
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from pilotif_lab import (
    LabHost,
    NodeKind,
    PilotifNode,
    make_node,
    ping,
    tcp_transfer,
    tunnel,
    tunnel_configs,
)
from pilotif_lab.capture import capture_udp, read_udp
from pilotif_lab.netns import pid_alive
from pilotif_lab.topology import LISTEN_PORT, TUNNEL_MTU, UNDERLAY_INTERFACE

from pilotif.wg.constants import MESSAGE_INITIATION, REKEY_TIMEOUT_JITTER_MAX_S, REKEY_TIMEOUT_S
from pilotif.wg.drops import DropReason

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

TRANSFER_BYTES = 10 * 2**20
HANDSHAKE_CAPTURE_PACKETS = 16
CLOCK_SLACK_S = 2.0
"""wireguard-go reports handshake times in whole seconds."""
KEEPALIVE_S = 1
KEEPALIVE_WAIT_S = 5.0
HANDSHAKE_WAIT_S = KEEPALIVE_S + REKEY_TIMEOUT_S + REKEY_TIMEOUT_JITTER_MAX_S + KEEPALIVE_WAIT_S
"""The keepalive's handshake may need its initiation sent again (one lost, or sent before
the peer listened: WireGuard retries after REKEY_TIMEOUT_S): a wait of KEEPALIVE_WAIT_S
alone raced that retry and lost it once on a loaded machine."""
_POLL_INTERVAL_S = 0.1

PILOTIF, WIREGUARD_GO = NodeKind.PILOTIF, NodeKind.WIREGUARD_GO
PAIRS = {
    "pilotif-wggo": (PILOTIF, WIREGUARD_GO),
    "pilotif-pilotif": (PILOTIF, PILOTIF),
    "wggo-wggo": (WIREGUARD_GO, WIREGUARD_GO),
}


@pytest.fixture(params=list(PAIRS.values()), ids=list(PAIRS))
def kinds(request: pytest.FixtureRequest) -> tuple[NodeKind, NodeKind]:
    """Which implementation runs on host A and on host B."""
    pair: tuple[NodeKind, NodeKind] = request.param
    return pair


def _endpoint(host: LabHost) -> str:
    return f"{host.addresses.underlay}:{LISTEN_PORT}"


@pytest.mark.parametrize("preshared_key", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize("initiator", ["a", "b"], ids=["a-initiates", "b-initiates"])
def test_tunnel_carries_ping_and_tcp_both_ways(
    hosts: tuple[LabHost, LabHost],
    kinds: tuple[NodeKind, NodeKind],
    initiator: str,
    preshared_key: bool,
    tmp_path: Path,
) -> None:
    a, b = hosts
    first, second = (a, b) if initiator == "a" else (b, a)
    started = time.time()
    with tunnel(kinds, hosts, preshared_key=preshared_key) as nodes:
        capture = tmp_path / "handshake.pcap"
        with capture_udp(
            a.namespace, UNDERLAY_INTERFACE, LISTEN_PORT, capture, HANDSHAKE_CAPTURE_PACKETS
        ):
            assert ping(first.namespace, second.addresses.overlay_v4).all_answered
        initiations = [d for d in read_udp(capture) if d.payload[0] == MESSAGE_INITIATION]
        assert initiations, "no handshake initiation crossed the underlay"
        assert initiations[0].source == (first.addresses.underlay, LISTEN_PORT)

        for source, destination in ((a, b), (b, a)):
            assert ping(source.namespace, destination.addresses.overlay_v4).all_answered
            assert ping(source.namespace, destination.addresses.overlay_v6).all_answered

        for node, other in zip(nodes, (b, a), strict=True):
            [peer] = node.peers()
            assert peer.endpoint == _endpoint(other)
            assert peer.latest_handshake is not None
            assert started - CLOCK_SLACK_S <= peer.latest_handshake <= time.time() + CLOCK_SLACK_S

        directions = (
            (a, b, nodes[0], nodes[1], b.addresses.overlay_v4),
            (b, a, nodes[1], nodes[0], a.addresses.overlay_v6),
        )
        for sender, receiver, sender_node, receiver_node, address in directions:
            [sender_before] = sender_node.peers()
            [receiver_before] = receiver_node.peers()
            result = tcp_transfer(sender.namespace, receiver.namespace, address, TRANSFER_BYTES)
            assert result.intact, result
            [sender_after] = sender_node.peers()
            [receiver_after] = receiver_node.peers()
            assert sender_after.tx_bytes - sender_before.tx_bytes >= TRANSFER_BYTES
            assert receiver_after.rx_bytes - receiver_before.rx_bytes >= TRANSFER_BYTES


def test_status_json_describes_interface_peer_and_counters(
    hosts: tuple[LabHost, LabHost],
) -> None:
    a, b = hosts
    with tunnel((PILOTIF, WIREGUARD_GO), hosts, preshared_key=True) as (node, peer_node):
        assert isinstance(node, PilotifNode)
        status = node.status()
        assert status["interface"] == node.interface
        assert status["public_key"] == node.config.public_key
        assert status["listen_port"] == LISTEN_PORT
        assert set(status["addresses"]) == set(node.config.addresses)
        assert status["mtu"] == TUNNEL_MTU
        assert status["pid"] == node.pid()
        assert pid_alive(status["pid"])
        [peer] = status["peers"]
        assert peer["public_key"] == peer_node.config.public_key
        assert peer["endpoint"] == _endpoint(b)
        assert set(peer["allowed_ips"]) == set(node.config.peers[0].allowed_ips)
        assert peer["latest_handshake"] is None
        assert peer["preshared_key"] is True
        assert peer["persistent_keepalive"] is None
        assert {reason.value for reason in DropReason} <= set(status["drops"])
        # The lab kernel grants TSO on the TUN, and a super-packet is capped to what one
        # UDP GSO send carries at this MTU ((1420 + 32) bytes each, 65507 at most).
        offloads = status["offloads"]
        assert offloads["tun"]["tso"] is True
        assert offloads["tso_max_segments"] == 65507 // (TUNNEL_MTU + 32)

        assert ping(a.namespace, b.addresses.overlay_v4).all_answered
        [after_ping] = node.status()["peers"]
        assert after_ping["latest_handshake"] is not None
        assert after_ping["rx_bytes"] > peer["rx_bytes"]
        assert after_ping["tx_bytes"] > peer["tx_bytes"]

        assert ping(b.namespace, a.addresses.overlay_v6).all_answered
        [after_second_ping] = node.status()["peers"]
        assert after_second_ping["rx_bytes"] > after_ping["rx_bytes"]
        assert after_second_ping["tx_bytes"] > after_ping["tx_bytes"]


def test_persistent_keepalive_brings_the_tunnel_up_without_traffic(
    hosts: tuple[LabHost, LabHost],
) -> None:
    a, b = hosts
    config_a, config_b = tunnel_configs(a, b, preshared_key=False, keepalive_s=KEEPALIVE_S)
    quiet_peer = replace(config_b.peers[0], persistent_keepalive_s=None)
    config_b = replace(config_b, peers=(quiet_peer,))
    with ExitStack() as stack:
        nodes = []
        for kind, host, config in ((PILOTIF, a, config_a), (WIREGUARD_GO, b, config_b)):
            node = make_node(kind, host, config)
            stack.callback(node.stop)
            node.start()
            nodes.append(node)
        pilotif_node, wggo_node = nodes
        assert isinstance(pilotif_node, PilotifNode)
        [peer] = pilotif_node.status()["peers"]
        assert peer["persistent_keepalive"] == KEEPALIVE_S
        deadline = time.monotonic() + HANDSHAKE_WAIT_S
        while wggo_node.peers()[0].latest_handshake is None:
            assert time.monotonic() < deadline, "no handshake within the keepalive wait"
            time.sleep(_POLL_INTERVAL_S)
        rx_after_handshake = wggo_node.peers()[0].rx_bytes
        deadline = time.monotonic() + KEEPALIVE_WAIT_S
        while wggo_node.peers()[0].rx_bytes == rx_after_handshake:
            assert time.monotonic() < deadline, "no keepalive after the handshake"
            time.sleep(_POLL_INTERVAL_S)
