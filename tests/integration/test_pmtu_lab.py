"""Issue 24 item 2 in the namespace lab: a path that carries at most 1280-byte packets
and says nothing about it (no ICMP: every larger packet vanishes) still carries a 20 MB
TCP transfer intact, both ways, once the nodes probed its MTU; a clean path keeps the
full MTU."""

import os
import time
from pathlib import Path

import pytest
from pilotif_lab.checks import tcp_transfer
from pilotif_lab.nat import PATH_TIMEOUT_S, NatKind, NatLab, nat_lab, poll_until, trust

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

TRANSFER_BYTES = 20 * 1024 * 1024
BLACK_HOLE_BYTES = 1280
FULL_MTU = 1420
MTU_FOUND_TIMEOUT_S = 20.0
"""Generous: the search takes about three probe timeouts (3 s) after the path settles."""
AGENT_LINK = "eth0"
FOUND_MTU = 1220
"""What fits in 1280 bytes after the outer IPv4 (20), UDP (8) and WireGuard (32) headers."""


def black_hole(lab: NatLab, router: int) -> None:
    """The internet router drops, silently, every packet over BLACK_HOLE_BYTES to or from
    router `router`'s WAN address (a PPPoE or tunnel link that drops ICMP)."""
    address = lab.routers[router].wan_address
    rules = f"""
table ip blackhole {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ip daddr {address} meta length > {BLACK_HOLE_BYTES} drop
        ip saddr {address} meta length > {BLACK_HOLE_BYTES} drop
    }}
}}
"""
    lab.public.run("nft", "-f", "-", input_text=rules)
    # On a real link each datagram of a GSO send is a packet of its own; here a GSO
    # send would cross the namespaces whole and fall into the hole whole: the agents
    # cut their sends before they leave.
    for agent in lab.agents.values():
        agent.namespace.run("ethtool", "-K", AGENT_LINK, "gso", "off", "tx-udp-segmentation", "off")


def peer_mtu(lab: NatLab, hostname: str, peer: str) -> int | None:
    row = lab[hostname].peer(peer)
    return int(row["mtu"]) if row is not None and row.get("mtu") is not None else None


def wait_for_found_mtu(lab: NatLab) -> None:
    """Until alpha and beta each found FOUND_MTU to the other (LabError after
    MTU_FOUND_TIMEOUT_S)."""
    for node, peer in (("alpha", "beta"), ("beta", "alpha")):
        poll_until(
            lambda node=node, peer=peer: peer_mtu(lab, node, peer) == FOUND_MTU or None,
            MTU_FOUND_TIMEOUT_S,
            f"{node} to find the path MTU to {peer}",
        )


def test_a_1280_byte_black_hole_is_found_and_a_transfer_gets_through_both_ways(
    tmp_path: Path,
) -> None:
    with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        black_hole(lab, 1)
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        started = time.monotonic()
        wait_for_found_mtu(lab)
        print(f"path MTU {FOUND_MTU} found {time.monotonic() - started:.1f} s after direct")
        beta_ip = beta.status()["node"]["ipv4"]
        alpha_ip = alpha.status()["node"]["ipv4"]
        there = tcp_transfer(alpha.namespace, beta.namespace, beta_ip, TRANSFER_BYTES)
        back = tcp_transfer(beta.namespace, alpha.namespace, alpha_ip, TRANSFER_BYTES)
        assert there.intact, there
        assert back.intact, back
        assert alpha.peer("beta")["path"] == "direct"
        too_big = alpha.status()["drops"].get("packet_too_big", 0)
        print(f"{there.megabits_per_s:.0f} / {back.megabits_per_s:.0f} Mbit/s, {too_big} too big")


def test_a_clean_path_keeps_the_full_mtu(tmp_path: Path) -> None:
    with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        time.sleep(5)  # longer than a search takes: the MTU must not have moved
        assert peer_mtu(lab, "alpha", "beta") == FULL_MTU
        assert peer_mtu(lab, "beta", "alpha") == FULL_MTU
        assert "path_mtu_changed" not in alpha.log_path.read_text()
