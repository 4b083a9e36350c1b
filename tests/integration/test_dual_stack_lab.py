"""Issue 24 item 3 in the namespace lab (pilotif_lab.dual_stack): a pair goes direct over
whichever family works. Symmetric IPv4 NATs on both sides with global IPv6 behind
stateful firewalls go direct over udp6; so do symmetric IPv4 NATs with NAT66 (ULAs: only
the public IPv6 endpoint the registry saw, family_endpoint, reaches in); cone NATs with
the firewalls go direct; a node without IPv6 and a dual-stack one pair over IPv4. Each
carries 20 MB intact."""

import os
import time
from pathlib import Path

import pytest
from pilotif_lab.checks import tcp_transfer
from pilotif_lab.dual_stack import (
    LAN_NETWORKS_V6,
    REGISTRY_BY_NAME,
    REGISTRY_DUAL_STACK,
    REGISTRY_V6,
    dual_stack_lab,
)
from pilotif_lab.nat import PATH_TIMEOUT_S, REGISTRY, Agent, NatKind, NatLab, trust

from pilotif.control.wire import parse_endpoint
from pilotif.net.transport import transport_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

TRANSFER_BYTES = 20 * 1024 * 1024
_PAIR = (("alpha", 0), ("beta", 1))


def _direct_and_carries(lab: NatLab, transports: tuple[str, ...]) -> dict[str, str]:
    """Trust alpha and beta; both direct within PATH_TIMEOUT_S of trust over one of
    `transports`; 20 MB from alpha to beta arrive intact. Each side's transport."""
    alpha, beta = lab["alpha"], lab["beta"]
    trust(alpha, beta)
    trusted_at = time.monotonic()
    rows = {
        "alpha": alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S),
        "beta": beta.wait_for_path("alpha", ("direct",), PATH_TIMEOUT_S),
    }
    print(f"direct {time.monotonic() - trusted_at:.1f} s after trust: {rows}")
    for row in rows.values():
        assert row["transport"] in transports, row
    beta_ip = beta.status()["node"]["ipv4"]
    result = tcp_transfer(alpha.namespace, beta.namespace, beta_ip, TRANSFER_BYTES)
    assert result.intact, result
    row = alpha.peer("beta")
    assert row is not None and row["path"] == "direct", row
    return {"alpha": row["transport"], "beta": rows["beta"]["transport"]}


def _up_dual(*agents: Agent) -> None:
    for agent in agents:
        agent.up(registry=REGISTRY_DUAL_STACK)


def _public_families(agent: Agent) -> list[str]:
    """The transport of each public endpoint the agent's status shows."""
    public = agent.status()["node"]["public_endpoints"]
    return [str(transport_of(parse_endpoint(text))) for text in public]


def test_symmetric_v4_nats_with_v6_firewalls_go_direct_over_udp6(tmp_path: Path) -> None:
    """alpha names the registry (a name with both families' addresses), beta lists both
    addresses: each registers over IPv4 and tells the registry its IPv6 endpoint."""
    with dual_stack_lab((NatKind.SYMMETRIC, NatKind.SYMMETRIC), _PAIR, tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up(registry=REGISTRY_BY_NAME)
        _up_dual(beta)
        transports = _direct_and_carries(lab, ("udp6",))
        assert transports == {"alpha": "udp6", "beta": "udp6"}
        for agent in (alpha, beta):
            assert agent.status()["node"]["registry_replicas"] == [REGISTRY, REGISTRY_V6]
            assert _public_families(agent) == ["udp4", "udp6"]


def test_symmetric_v4_nats_with_nat66_go_direct_over_udp6(tmp_path: Path) -> None:
    nats = (NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    with dual_stack_lab(nats, _PAIR, tmp_path, nat66=True) as lab:
        _up_dual(lab["alpha"], lab["beta"])
        transports = _direct_and_carries(lab, ("udp6",))
        assert transports == {"alpha": "udp6", "beta": "udp6"}


def test_cone_v4_nats_with_v6_firewalls_go_direct(tmp_path: Path) -> None:
    with dual_stack_lab((NatKind.CONE, NatKind.CONE), _PAIR, tmp_path) as lab:
        _up_dual(lab["alpha"], lab["beta"])
        _direct_and_carries(lab, ("udp4", "udp6"))


def test_ipv6_only_nodes_behind_firewalls_go_direct_over_udp6(tmp_path: Path) -> None:
    """No IPv4 on either agent (IPv6-only hosts): the registry over IPv6 alone."""
    nats = (NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    with dual_stack_lab(nats, _PAIR, tmp_path, v6_only=("alpha", "beta")) as lab:
        for agent in (lab["alpha"], lab["beta"]):
            agent.up(registry=REGISTRY_V6)
        assert _direct_and_carries(lab, ("udp6",)) == {"alpha": "udp6", "beta": "udp6"}
        assert _public_families(lab["alpha"]) == ["udp6"]


def test_ipv6_only_nodes_that_cannot_punch_are_relayed_over_ipv6(tmp_path: Path) -> None:
    """Each firewall also drops what comes from the other's LAN (a connection it opened
    or not): no direct path, and the registry relays over IPv6."""
    nats = (NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    with dual_stack_lab(nats, _PAIR, tmp_path, v6_only=("alpha", "beta")) as lab:
        for router, other_lan in zip(lab.routers, reversed(LAN_NETWORKS_V6), strict=True):
            rule = f"insert rule ip6 pflab_fw6 forward ip6 saddr {other_lan} drop"
            router.namespace.run("nft", rule)
        alpha, beta = lab["alpha"], lab["beta"]
        for agent in (alpha, beta):
            agent.up(registry=REGISTRY_V6)
        trust(alpha, beta)
        alpha.wait_for_path("beta", ("relay",), PATH_TIMEOUT_S)
        beta_ip = beta.status()["node"]["ipv4"]
        result = tcp_transfer(alpha.namespace, beta.namespace, beta_ip, TRANSFER_BYTES)
        assert result.intact, result
        row = alpha.peer("beta")
        assert row is not None and row["path"] == "relay", row


def test_ipv6_that_carries_one_way_only_leaves_the_pair_on_ipv4(tmp_path: Path) -> None:
    """beta's firewall drops what comes from alpha's LAN over IPv6, alpha's lets beta's
    in (cone IPv4 NATs): 20 MB arrive intact, and the pair ends on IPv4 both ways."""
    with dual_stack_lab((NatKind.CONE, NatKind.CONE), _PAIR, tmp_path) as lab:
        rule = f"insert rule ip6 pflab_fw6 forward ip6 saddr {LAN_NETWORKS_V6[0]} drop"
        lab.routers[1].namespace.run("nft", rule)
        _up_dual(lab["alpha"], lab["beta"])
        _direct_and_carries(lab, ("udp4", "udp6"))
        for agent, peer in ((lab["alpha"], "beta"), (lab["beta"], "alpha")):
            row = agent.peer(peer)
            assert row is not None and (row["path"], row["transport"]) == ("direct", "udp4")


def test_a_v4_only_node_and_a_dual_stack_node_pair_over_v4(tmp_path: Path) -> None:
    with dual_stack_lab((NatKind.CONE, NatKind.CONE), _PAIR, tmp_path, v4_only=("beta",)) as lab:
        _up_dual(lab["alpha"])
        lab["beta"].up()
        assert _direct_and_carries(lab, ("udp4",)) == {"alpha": "udp4", "beta": "udp4"}
