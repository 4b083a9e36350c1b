"""A trusted peer's candidate endpoints are its own word: the node probes ordinary
unicast addresses only, never loopback, link-local (a cloud's metadata service),
multicast, the overlay or itself, and private ones only when it is on a LAN itself.
In memory against the registry core (tests/unit/netsim.py), and the filter alone."""

from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from pilotif.control.identity import IPV6_PREFIX
from pilotif.node.candidates import MAX_PEER_CANDIDATES, usable_candidates
from pilotif.node.lan import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_TENTATIVE,
    candidate_order,
    local_endpoints,
    usable_address,
)
from pilotif.wg.events import Endpoint
from tests.unit.netsim import Network, SimNode

OVERLAY = [IPV6_PREFIX, IPv4Network("100.64.0.0/10")]
ON_A_LAN = ["192.168.1.20:41641"]


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:22",
        "[::1]:22",
        "[::ffff:127.0.0.1]:22",
        "169.254.169.254:80",
        "[fe80::1]:53",
        "224.0.0.251:5353",
        "[ff02::1]:53",
        "0.0.0.0:53",
        "255.255.255.255:9",
        "240.0.0.1:9",
        "100.64.0.7:22",
        "[fd50:696c:6f74::1]:22",
        "192.168.1.20:41641",
        "192.168.1.20:22",
        "not an endpoint",
        "10.0.0.1:0",
    ],
)
def test_a_candidate_nobody_should_probe_is_refused(text: str) -> None:
    assert usable_candidates([text], ON_A_LAN, OVERLAY) == ([], 1)


def test_public_and_lan_candidates_are_kept_in_order_without_repeats() -> None:
    texts = ["93.184.216.34:1024", "192.168.1.30:41641", "[2001:db8::1]:5", "93.184.216.34:1024"]
    usable, refused = usable_candidates(texts, ON_A_LAN, OVERLAY)
    # 2001:db8::/32 is documentation space: not global, and this node has no v6 LAN.
    assert usable == [("93.184.216.34", 1024), ("192.168.1.30", 41641)]
    assert refused == 1


def test_private_candidates_need_a_lan_of_the_same_family_here() -> None:
    lan = ["10.1.2.3:41641", "[fd00:1::5]:41641"]
    assert usable_candidates(lan, ["93.184.216.1:41641"], OVERLAY) == ([], 2)
    assert usable_candidates(lan, ["172.16.0.2:41641"], OVERLAY) == ([("10.1.2.3", 41641)], 1)


def test_at_most_a_few_candidates_are_kept() -> None:
    texts = [f"93.184.216.{n}:1000" for n in range(1, 40)]
    usable, refused = usable_candidates(texts, ON_A_LAN, OVERLAY)
    assert len(usable) == MAX_PEER_CANDIDATES
    assert refused == 39 - MAX_PEER_CANDIDATES


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    yield network
    network.registry.store.close()


def test_a_peer_cannot_make_the_node_probe_loopback_metadata_or_itself(net: Network) -> None:
    """Issue 22: a trusted peer's self-reported LAN candidates were probed as they came."""
    alpha, beta = net.node("alpha"), net.node("beta")
    alpha_lan = f"{alpha.address[0]}:{alpha.address[1]}"
    beta.core.registration.lan_endpoints = [
        "127.0.0.1:22",
        "169.254.169.254:80",
        alpha_lan,
        "[::1]:53",
    ]
    sent_to: list[Endpoint] = []
    send = net.send

    def recording(sender: SimNode, data: bytes, to: Endpoint, hops: int | None = None) -> None:
        if sender is alpha:
            sent_to.append(to)
        send(sender, data, to, hops)

    net.send = recording  # type: ignore[method-assign]
    net.up(alpha, beta)
    net.trust(alpha, beta)
    net.run_until(lambda: alpha.path_to(beta) == "direct", 10.0)
    hosts = {host for host, _ in sent_to}
    assert hosts.isdisjoint({"127.0.0.1", "169.254.169.254", alpha.address[0], "::1"})
    assert alpha.core.paths.candidates_refused >= 4


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("127.0.0.1", 0),
        ("::1", 0),
        ("169.254.1.1", 0),
        ("fe80::1", 0),
        ("ff02::1", 0),
        ("::", 0),
        ("not an address", 0),
        ("3fff::5", IFA_F_TENTATIVE),
        ("3fff::5", IFA_F_DEPRECATED),
        ("3fff::5", IFA_F_DADFAILED),
    ],
)
def test_an_address_no_peer_reaches_is_no_lan_candidate(text: str, flags: int) -> None:
    assert usable_address(text, flags) is None


def test_both_families_are_reported_the_first_of_each_first() -> None:
    """Issue 24 item 3: the node reported IPv4 only, so two nodes with global IPv6 behind
    symmetric IPv4 NATs stayed on the relay. The registry keeps the first few: a host with
    many IPv4 bridges must still report its IPv6, global before ULA."""
    found = [
        usable_address(text, 0)
        for text in ("10.0.0.2", "172.17.0.1", "fd00::2", "192.168.5.1", "3fff::2", "10.0.0.2")
    ]
    ordered = candidate_order([a for a in found if a is not None], 41641)
    assert ordered == [
        "10.0.0.2:41641",
        "[3fff::2]:41641",
        "172.17.0.1:41641",
        "192.168.5.1:41641",
        "[fd00::2]:41641",
    ]
    assert usable_address("3fff::2", 0x80) is not None  # IFA_F_PERMANENT


def test_this_host_reports_its_ipv6_too() -> None:
    """Whatever this namespace has: no loopback, no link-local, IPv6 with brackets."""
    for text in local_endpoints(41641, "pf-none"):
        host = text.rpartition(":")[0]
        assert host not in ("127.0.0.1", "[::1]") and not host.startswith("[fe80")
        assert (":" in host) == host.startswith("[")
