"""Issue 24 item 5 in the namespace lab: alpha sits behind a symmetric NAT whose router
runs miniupnpd (NAT-PMP, PCP, UPnP IGD; pilotif_lab.upnp_router); beta behind a cone NAT
that filters by endpoint. With the router's mapping of alpha's port as a candidate the
pair goes direct and carries 20 MB intact; the mapping shows in `pilotif status` and is
deleted at `down`. The control: the same network without miniupnpd stays relayed."""

import os
import time
from pathlib import Path

import pytest
from pilotif_lab.checks import ping, tcp_transfer
from pilotif_lab.nat import PATH_TIMEOUT_S, NatKind, nat_lab, poll_until, trust
from pilotif_lab.upnp_router import mappings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

TRANSFER_BYTES = 20 * 1024 * 1024
MAPPED_TIMEOUT_S = 15.0
"""From `up` to the mapping in status: the first answer normally comes at once."""
RELAYED_FOR_S = 3 * PATH_TIMEOUT_S
"""How long the control pair is watched (it must not go direct meanwhile)."""
NATS = (NatKind.SYMMETRIC, NatKind.CONE)


def test_a_node_behind_a_symmetric_nat_that_maps_its_port_goes_direct(tmp_path: Path) -> None:
    with nat_lab(NATS, (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        lab.start_port_mapping(0)
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        mapping = poll_until(
            lambda: alpha.status()["node"]["port_mapping"],
            MAPPED_TIMEOUT_S,
            "alpha's port mapping in its status",
        )
        port = alpha.status()["listen_port"]
        assert mapping["protocol"] == "pcp"
        assert mapping["external"] == f"{lab.routers[0].wan_address}:{port}"
        assert mapping["lifetime_s"] > 0
        assert f"port mapping: {mapping['external']} by pcp" in alpha.pilotif("status").stdout
        assert any(f"dport {port} dnat" in rule for rule in mappings(lab.routers[0].namespace))
        trust(alpha, beta)
        trusted_at = time.monotonic()
        row = beta.wait_for_path("alpha", ("direct",), PATH_TIMEOUT_S)
        alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        print(f"direct {time.monotonic() - trusted_at:.1f} s after trust")
        assert row["endpoint"] == mapping["external"]
        beta_ip = beta.status()["node"]["ipv4"]
        assert ping(alpha.namespace, beta_ip).all_answered
        result = tcp_transfer(alpha.namespace, beta.namespace, beta_ip, TRANSFER_BYTES)
        assert result.intact, result
        alpha.down()
        assert not any(f"dport {port} " in rule for rule in mappings(lab.routers[0].namespace))


def test_without_the_mapping_the_same_pair_stays_relayed(tmp_path: Path) -> None:
    with nat_lab(NATS, (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        alpha.wait_for_path("beta", ("relay",), PATH_TIMEOUT_S)
        deadline = time.monotonic() + RELAYED_FOR_S
        while time.monotonic() < deadline:
            assert alpha.peer("beta")["path"] == "relay"
            time.sleep(1.0)
        assert alpha.status()["node"]["port_mapping"] is None
        assert ping(alpha.namespace, beta.status()["node"]["ipv4"]).all_answered
