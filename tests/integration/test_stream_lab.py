"""Issue 24 items 1 and 8 in the NAT lab: nodes whose UDP does not get out reach the
registry over the stream transport (TCP, an HTTP/1.1 Upgrade) and carry their peers over
it, relayed; through an HTTP proxy (tinyproxy, squid) when only the proxy is reachable;
and back on UDP once UDP gets out again. nftables in each agent's namespace does the
blocking: what leaves its LAN link is filtered, the overlay (the TUN) is not."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pilotif_lab.checks import ping, tcp_transfer
from pilotif_lab.nat import (
    RELAY_PORT,
    Agent,
    NatKind,
    NatLab,
    nat_lab,
    poll_until,
    relay_log,
    relay_spec,
    trust,
)
from pilotif_lab.proxies import ProxyKind, http_proxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

TRANSFER_BYTES = 20 * 1024 * 1024
PATH_TIMEOUT_S = 30.0
"""From trust to a relayed path over the streams (generous: slow machines)."""
BACK_TO_UDP_S = 90.0
"""From unblocking UDP to the node on UDP again (a probe every 10 s, at a control send:
a heartbeat every 20 s)."""
REGISTRY_PORT = 7946
PROXY_HOST = "proxy"
_TABLE = "pflab_block"
_LINK = "eth0"


def block(agent: Agent, rule: str) -> None:
    """Drop what leaves the agent's LAN link and matches `rule` (nftables)."""
    ruleset = f"""
table inet {_TABLE} {{
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{_LINK}" {rule} drop
    }}
}}
"""
    agent.namespace.run("nft", "-f", "-", input_text=ruleset)


def unblock(agent: Agent) -> None:
    agent.namespace.run("nft", "delete", "table", "inet", _TABLE)


def up(agent: Agent, *extra: str, env: dict[str, str] | None = None) -> None:
    """`pilotif up` joined to the lab registry with `extra` options (and `env`)."""
    args = ["--registry", f"198.18.0.1:{REGISTRY_PORT}", "--hostname", agent.hostname]
    agent._up_args = [*args, *extra]
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        agent.restart()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def relayed_transfer(alpha: Agent, beta: Agent, transport: str) -> None:
    """Trust, a relayed path over the streams, and 20 MB from beta to alpha intact."""
    trust(alpha, beta)
    for me, other in ((alpha, beta), (beta, alpha)):
        row = me.wait_for_path(other.hostname, ("relay",), PATH_TIMEOUT_S)
        assert row["transport"] == transport, row
    alpha_ip = str(alpha.status()["node"]["ipv4"])
    assert ping(beta.namespace, alpha_ip, 3).all_answered
    result = tcp_transfer(beta.namespace, alpha.namespace, alpha_ip, TRANSFER_BYTES)
    print(f"20 MB over the {transport}: {result.megabits_per_s:.0f} Mbit/s")
    assert result.intact, result


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NatLab]:
    with nat_lab(
        (NatKind.CONE, NatKind.CONE),
        (("alpha", 0), ("beta", 1)),
        tmp_path,
        internet_hosts=(PROXY_HOST,),
    ) as built:
        yield built


def test_nodes_without_udp_come_up_over_the_stream_and_return_to_udp(lab: NatLab) -> None:
    alpha, beta = lab["alpha"], lab["beta"]
    for agent in (alpha, beta):
        block(agent, "meta l4proto udp")
    up(alpha)  # auto: falls back when UDP gets no answer
    up(beta, "--transport", "tcp")
    for agent in (alpha, beta):
        transport = agent.status()["transport"]
        assert transport["carrier"] == "tcp", transport
    assert alpha.status()["transport"]["mode"] == "auto"
    relayed_transfer(alpha, beta, "tcp relay")

    unblock(alpha)
    poll_until(
        lambda: True if alpha.status()["transport"]["carrier"] == "udp" else None,
        BACK_TO_UDP_S,
        "alpha back on UDP",
    )
    assert beta.status()["transport"]["carrier"] == "tcp"  # --transport tcp stays
    assert ping(alpha.namespace, str(beta.status()["node"]["ipv4"]), 3).all_answered


@pytest.mark.parametrize("kind", [ProxyKind.TINYPROXY, ProxyKind.SQUID])
def test_nodes_that_reach_only_a_proxy_go_through_it(
    lab: NatLab, kind: ProxyKind, tmp_path: Path
) -> None:
    alpha, beta = lab["alpha"], lab["beta"]
    proxy_host = lab.internet[PROXY_HOST]
    auth = "agent:s3cret" if kind is ProxyKind.TINYPROXY else None
    with http_proxy(
        kind, proxy_host.namespace, proxy_host.address, (REGISTRY_PORT,), tmp_path, auth
    ) as proxy:
        for agent in (alpha, beta):
            block(agent, f"ip daddr != {proxy_host.address}")
        url = f"http://{auth + '@' if auth else ''}{proxy}"
        up(alpha, env={"HTTPS_PROXY": url})
        up(beta, "--proxy", url)
        for agent in (alpha, beta):
            transport = agent.status()["transport"]
            assert transport["carrier"] == "tcp via proxy", transport
            assert "s3cret" not in str(transport)
        relayed_transfer(alpha, beta, "tcp relay via proxy")


def test_a_standalone_relay_carries_peers_over_its_stream(tmp_path: Path) -> None:
    relay = "198.18.0.3"
    with nat_lab(
        (NatKind.CONE, NatKind.CONE),
        (("alpha", 0), ("beta", 1)),
        tmp_path,
        registry_args=("--relay", relay_spec(tmp_path, relay)),
    ) as lab:
        lab.start_relay(relay)
        alpha, beta = lab["alpha"], lab["beta"]
        for agent in (alpha, beta):
            block(agent, "meta l4proto udp")
            up(agent)
        for agent in (alpha, beta):
            poll_until(
                lambda agent=agent: True if _home(agent) == f"{relay}:{RELAY_PORT}" else None,
                PATH_TIMEOUT_S,
                f"{agent.hostname} on the relay",
            )
        relayed_transfer(alpha, beta, "tcp relay")
        lab.stop_relay(relay)
        log = relay_log(tmp_path, relay).read_text()
        stopped = [json.loads(line) for line in log.splitlines() if '"relay_stopped"' in line]
        assert stopped and stopped[-1]["stream_opened"] >= 2, stopped
        assert stopped[-1]["relayed_bytes"] >= TRANSFER_BYTES, stopped


def _home(agent: Agent) -> str | None:
    homes = [r["endpoint"] for r in agent.status()["node"]["relays"] if r["home"]]
    return homes[0] if homes else None
