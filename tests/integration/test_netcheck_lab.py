"""Issue 24 item 6 in the NAT lab: what `pilotif netcheck --json` tells a user, with no
daemon running and (alpha's first run) no root: behind a cone NAT (r0) the mapping does
not vary by destination, behind a symmetric NAT (r1) it does; each relay's round trip and
the nearest; the port mapping protocol where miniupnpd runs (and the mapping deleted at
once), none where it does not; the MTU towards the registry on a path that drops packets
over 1280 bytes; only the HTTPS_PROXY reachable: no UDP, the stream through it would
carry. In the dual-stack lab: UDP over IPv6 where the host and the registry have IPv6, no
where the host has none; beside a running node, its registry's addresses."""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pilotif_lab.dual_stack import REGISTRY_DUAL_STACK, agent_v6, dual_stack_lab
from pilotif_lab.nat import (
    REGISTRY,
    RELAY_PORT,
    Agent,
    NatKind,
    NatLab,
    nat_lab,
    poll_until,
    relay_spec,
)
from pilotif_lab.pilotif_node import pilotif_executable
from pilotif_lab.proxies import ProxyKind, http_proxy
from pilotif_lab.unprivileged import as_nobody
from pilotif_lab.upnp_router import mappings

from tests.integration.test_stream_lab import block, unblock

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

RELAYS = ("198.18.0.5", "198.18.0.6")
PROXY_HOST = "proxy"
REGISTRY_PORT = int(REGISTRY.rsplit(":", 1)[1])
FULL_MTU = 1500
"""The lab's links (Ethernet)."""
RELAYS_KNOWN_TIMEOUT_S = 15.0
"""From `up` to the relays in status (given at registration: normally at once)."""
PORT_MAPPING_PROTOCOLS = {"pcp", "nat-pmp", "upnp"}
NARROW_PATH_BYTES = 1280
_NARROW_TABLE = "pflab_narrow"


def narrow_path(lab: NatLab, router: int) -> None:
    """The internet drops, silently, every packet over NARROW_PATH_BYTES from router
    `router`'s WAN address, to the registry (on the public namespace itself) and beyond
    (a PPPoE or tunnel link that drops ICMP, as the path MTU lab's)."""
    address = lab.routers[router].wan_address
    chains = "".join(
        f"""
    chain {hook} {{
        type filter hook {hook} priority -10; policy accept;
        ip saddr {address} meta length > {NARROW_PATH_BYTES} drop
    }}"""
        for hook in ("input", "forward")
    )
    lab.public.run("nft", "-f", "-", input_text=f"table ip {_NARROW_TABLE} {{{chains}\n}}\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatLab]:
    """alpha behind a cone NAT, beta behind a symmetric one, two relays the registry
    names to nodes; no node is up."""
    workdir = tmp_path_factory.mktemp("netcheck")
    specs = [relay_spec(workdir, address) for address in RELAYS]
    with nat_lab(
        (NatKind.CONE, NatKind.SYMMETRIC),
        (("alpha", 0), ("beta", 1)),
        workdir,
        internet_hosts=(PROXY_HOST,),
        registry_args=[arg for spec in specs for arg in ("--relay", spec)],
    ) as built:
        for address in RELAYS:
            built.start_relay(address)
        yield built


def netcheck(
    agent: Agent,
    *extra: str,
    env: dict[str, str] | None = None,
    unprivileged: bool = False,
    registry: str = REGISTRY,
    relays: tuple[str, ...] = RELAYS,
) -> dict[str, Any]:
    """`pilotif netcheck --json` in the agent's namespace against the lab's registry and
    `relays` (the agent's node is not running)."""
    command = [
        *(f"{name}={value}" for name, value in (env or {}).items()),
        pilotif_executable(),
        "netcheck",
        "--json",
        "--registry",
        registry,
        *(arg for address in relays for arg in ("--relay", f"{address}:{RELAY_PORT}")),
        *extra,
    ]
    command = ["env", "-u", "HTTPS_PROXY", "-u", "https_proxy", *command]
    if unprivileged:
        command = as_nobody(*command)
    result = agent.namespace.run(*command)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_cone_and_symmetric_nats_relays_and_the_full_mtu(lab: NatLab) -> None:
    cone = netcheck(lab["alpha"], "--no-port-mapping", unprivileged=True)
    symmetric = netcheck(lab["beta"], "--no-port-mapping")
    print(json.dumps(cone, indent=1), json.dumps(symmetric, indent=1))
    for report in (cone, symmetric):
        assert report["udp_v4"] is True
        assert report["udp_v6"] is None  # the lab's servers have no IPv6 address
        assert report["transport"] == "udp" and report["proxy"] is None
        assert report["mtu_to_registry"] == FULL_MTU
        assert [r["endpoint"] for r in report["relays"]] == [f"{a}:{RELAY_PORT}" for a in RELAYS]
        assert all(r["rtt_ms"] is not None for r in report["relays"])
        assert report["nearest_relay"] in {r["endpoint"] for r in report["relays"]}
        assert report["registry"][0]["rtt_ms"] is not None
        assert report["stream"]["works"] is True
    assert cone["mapping_varies_by_destination"] is False
    (public,) = cone["public_v4"]
    assert public.startswith(lab.routers[0].wan_address + ":")
    assert symmetric["mapping_varies_by_destination"] is True
    assert len(symmetric["public_v4"]) == 1 + len(RELAYS)
    assert all(e.startswith(lab.routers[1].wan_address + ":") for e in symmetric["public_v4"])


def test_the_port_mapping_protocol_where_miniupnpd_runs_and_none_elsewhere(lab: NatLab) -> None:
    lab.start_port_mapping(0)
    try:
        mapped = netcheck(lab["alpha"])
        router = lab.routers[0].namespace
        left = mappings(router)
    finally:
        lab.stop_port_mapping()
    none = netcheck(lab["beta"])
    print(mapped["port_mapping"], left)
    assert mapped["port_mapping_checked"] is True
    assert mapped["port_mapping"]["protocol"] in PORT_MAPPING_PROTOCOLS
    assert mapped["port_mapping"]["external"].startswith(lab.routers[0].wan_address + ":")
    assert left == []  # deleted at once
    assert none["port_mapping_checked"] is True and none["port_mapping"] is None


def test_the_mtu_towards_the_registry_on_a_1280_byte_path(lab: NatLab) -> None:
    narrow_path(lab, 1)
    try:
        report = netcheck(lab["beta"], "--no-port-mapping")
    finally:
        lab.public.run("nft", "delete", "table", "ip", _NARROW_TABLE)
    assert report["mtu_to_registry"] == NARROW_PATH_BYTES
    assert report["udp_v4"] is True


def test_only_the_proxy_reachable_the_stream_through_it_would_carry(lab: NatLab) -> None:
    proxy_host = lab.internet[PROXY_HOST]
    alpha = lab["alpha"]
    with http_proxy(
        ProxyKind.TINYPROXY,
        proxy_host.namespace,
        proxy_host.address,
        (REGISTRY_PORT,),
        lab.workdir,
    ) as proxy:
        block(alpha, f"ip daddr != {proxy_host.address}")  # only the proxy is reachable
        try:
            report = netcheck(alpha, "--no-port-mapping", env={"HTTPS_PROXY": f"http://{proxy}"})
        finally:
            unblock(alpha)
    assert report["udp_v4"] is False and report["public_v4"] == []
    assert report["transport"] == "tcp"
    assert report["proxy"] == f"http://{proxy}"
    assert report["stream"]["works"] is True


def test_beside_a_running_node_its_registry_and_relays_are_checked(lab: NatLab) -> None:
    alpha = lab["alpha"]
    alpha.up()
    try:
        poll_until(
            lambda: len(alpha.status()["node"].get("relays") or []) == len(RELAYS) or None,
            RELAYS_KNOWN_TIMEOUT_S,
            "alpha to know the relays",
        )
        report = alpha.json("netcheck", "--no-port-mapping")
    finally:
        alpha.down()
    assert [r["endpoint"] for r in report["registry"]] == [REGISTRY]
    assert sorted(r["endpoint"] for r in report["relays"]) == [f"{a}:{RELAY_PORT}" for a in RELAYS]
    assert all(r["rtt_ms"] is not None for r in report["relays"])


def test_ipv6_where_the_registry_and_the_host_have_it_and_the_running_nodes_registry(
    tmp_path: Path,
) -> None:
    with dual_stack_lab(
        (NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path, v4_only=("beta",)
    ) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        dual = netcheck(alpha, "--no-port-mapping", registry=REGISTRY_DUAL_STACK, relays=())
        v4_only = netcheck(beta, "--no-port-mapping", registry=REGISTRY_DUAL_STACK, relays=())
        v4_only_text = beta.namespace.run(
            *("env", "-u", "HTTPS_PROXY", "-u", "https_proxy", pilotif_executable()),
            *("netcheck", "--no-port-mapping", "--registry", REGISTRY_DUAL_STACK),
        ).stdout
        alpha.up(registry=REGISTRY_DUAL_STACK)
        from_node = alpha.json("netcheck", "--no-port-mapping")
    print(json.dumps(dual, indent=1), json.dumps(v4_only, indent=1), json.dumps(from_node))
    assert dual["udp_v4"] is True and dual["udp_v6"] is True
    assert dual["public_v6"] == [f"[{agent_v6(0, 2)}]:{dual['public_v6'][0].rsplit(':', 1)[1]}"]
    assert dual["ipv6_route"] is True
    assert v4_only["udp_v4"] is True and v4_only["udp_v6"] is False
    assert v4_only["ipv6_route"] is False
    assert "UDP over IPv6: no (no IPv6 route on this host)" in v4_only_text
    assert from_node["udp_v6"] is True
    assert {r["endpoint"] for r in from_node["registry"]} == set(REGISTRY_DUAL_STACK.split(","))
