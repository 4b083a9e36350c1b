"""Issue 24 item 3, the node's side: a dual-stack node registers over one family and,
after each registration, sends `family_endpoint` to the registry's address of the other
family, so that the registry keeps (and gives peers) its public endpoint of each family.
That request goes to its own address only (its silence never moves the node to another
registry address), an older registry that does not know the op is asked once, and
garbage in its reply keeps nothing. Then pairs in the simulated network: a pair goes
direct over whichever family works, and not over one that never answers. The link and
the registry core in memory, and tests/unit/netsim.py."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pilotif.control.wire import REGISTRY_COOKIE_TYPE, format_endpoint
from pilotif.net.transport import transport_of
from pilotif.node.candidates import usable_candidates
from pilotif.node.events import PathChanged
from pilotif.node.other_family import FAMILY_ENDPOINT_OP, OtherFamily
from pilotif.node.registry_link import (
    REQUEST_ATTEMPTS,
    REQUEST_RETRY_S,
    Errands,
    GaveUp,
    LinkInput,
    RegistryLink,
    Reply,
    SwitchedRegistry,
)
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.events import Endpoint
from tests.unit.netsim import NODE_PORT, Ipv6, Mapping, Network, SimNode
from tests.unit.test_node_core import TRUST_TO_DIRECT_S, _both_direct, _ping_arrives, _trusting
from tests.unit.test_registry_link import Pair

REGISTRY_V4: Endpoint = ("198.18.0.1", 9000)
REGISTRY_V6: Endpoint = ("3fff::1", 9000)
NODE_V4: Endpoint = ("198.18.1.2", 40001)
"""The node's public IPv4 endpoint (its NAT's mapping)."""
NODE_V6: Endpoint = ("3fff:0:0:1::2", 51820)
"""The node's global IPv6 endpoint (no NAT)."""


class DualPair(Pair):
    """The registry core at an IPv4 and an IPv6 address, and one dual-stack node's link
    (registered over IPv4) with its errands and its other family."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.node = RegistryLink(
            generate_private_key(),
            REGISTRY_V4,
            self.core.public_key,
            first_counter=1,
            replicas=(REGISTRY_V6,),
        )
        self.errands = Errands(self.node)
        self.other = OtherFamily(self.node, self.errands)
        self.sources = {REGISTRY_V4: NODE_V4, REGISTRY_V6: NODE_V6}
        """Where the node's datagrams to each registry address come from."""
        self.lost: set[Endpoint] = set()
        """Registry addresses whose datagrams are lost."""

    def carry(self) -> list[LinkInput]:
        """Carry the node's datagrams to the registry and back until none is left."""
        inputs: list[LinkInput] = []
        while self.node.outgoing:
            sent, self.node.outgoing = self.node.outgoing, []
            for datagram, to in sent:
                if to in self.lost:
                    continue
                source = self.sources[to]
                for answer, destination in self.core.handle_datagram(datagram, source, self.now):
                    self.heard.setdefault(destination, []).append(answer)
                    if destination == source:
                        inputs += self.node.receive(answer, self.now, to)
        return inputs

    def answer_errands(self, inputs: list[LinkInput]) -> None:
        """What the node core does with its errands' replies and silences."""
        for item in inputs:
            if not isinstance(item, Reply | GaveUp):
                continue
            if self.errands.pop(item.request_id) != FAMILY_ENDPOINT_OP:
                continue
            if isinstance(item, GaveUp):
                self.other.silent()
            elif item.message.get("ok"):
                self.other.answered(item.message)
            else:
                self.other.refused(item.message)

    def register(self) -> None:
        request_id = self.node.request("register", {"hostname": "alice", "tags": [], "lan": []}, 0)
        replies = [i for i in self.carry() if isinstance(i, Reply)]
        assert [r.request_id for r in replies] == [request_id] and replies[0].message["ok"]
        self.other.registered(self.now)
        self.answer_errands(self.carry())


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[DualPair]:
    built = DualPair(tmp_path)
    yield built
    built.store.close()


def test_a_dual_stack_node_tells_the_registry_its_endpoint_of_the_other_family(
    pair: DualPair,
) -> None:
    pair.register()
    assert pair.other.endpoint == "[3fff:0:0:1::2]:51820"
    # The registry asked the new address for a cookie first (it gets no more than it
    # sent until it proves it receives there).
    assert pair.heard[NODE_V6][0][0] == REGISTRY_COOKIE_TYPE
    assert pair.node.endpoint == REGISTRY_V4


def test_it_is_asked_again_at_each_registration_but_never_twice_at_once(
    pair: DualPair,
) -> None:
    pair.register()
    pair.lost.add(REGISTRY_V6)
    pair.other.registered(pair.now)
    pair.other.registered(pair.now)
    to_v6 = [to for _, to in pair.node.outgoing if to == REGISTRY_V6]
    assert len(to_v6) == 1


def test_silence_over_the_other_family_forgets_it_and_never_moves_the_node(
    pair: DualPair,
) -> None:
    pair.register()
    pair.lost.add(REGISTRY_V6)
    pair.other.registered(pair.now)
    inputs: list[LinkInput] = []
    for _ in range(REQUEST_ATTEMPTS + 1):
        pair.now += REQUEST_RETRY_S
        inputs += pair.node.handle_timer(pair.now)
        inputs += pair.carry()
    assert not any(isinstance(i, SwitchedRegistry) for i in inputs)
    assert pair.node.endpoint == REGISTRY_V4
    pair.answer_errands(inputs)
    assert pair.other.endpoint is None
    assert not pair.errands.waiting(FAMILY_ENDPOINT_OP)


def test_after_failing_over_to_ipv6_the_node_tells_its_ipv4_endpoint(pair: DualPair) -> None:
    """IPv4 to the registry breaks: the node registers over IPv6 (its other registry
    address), and once IPv4 works again the registry learns that endpoint the other way
    round."""
    pair.lost.add(REGISTRY_V4)
    request_id = pair.node.request("register", {"hostname": "alice", "tags": [], "lan": []}, 0)
    inputs: list[LinkInput] = []
    while not any(isinstance(i, Reply) for i in inputs):
        pair.now += REQUEST_RETRY_S
        inputs += pair.node.handle_timer(pair.now) + pair.carry()
    assert pair.node.endpoint == REGISTRY_V6
    assert [i.request_id for i in inputs if isinstance(i, Reply)] == [request_id]
    pair.lost.clear()
    pair.other.registered(pair.now)
    pair.answer_errands(pair.carry())
    assert pair.other.endpoint == "198.18.1.2:40001"


def test_an_older_registry_is_asked_once(pair: DualPair) -> None:
    pair.core._ops.pop(FAMILY_ENDPOINT_OP)
    pair.register()
    assert pair.other.unsupported and pair.other.endpoint is None
    pair.other.registered(pair.now)
    assert pair.node.outgoing == []


def test_a_node_with_one_family_never_asks(tmp_path: Path) -> None:
    pair = DualPair(tmp_path)
    try:
        pair.node = RegistryLink(
            generate_private_key(), REGISTRY_V4, pair.core.public_key, first_counter=1
        )
        pair.errands = Errands(pair.node)
        pair.other = OtherFamily(pair.node, pair.errands)
        pair.register()
        assert NODE_V6 not in pair.heard and pair.other.endpoint is None
    finally:
        pair.store.close()


@pytest.mark.parametrize(
    "reply",
    [
        {"ok": True},
        {"ok": True, "public_endpoint": "[3fff::2]:1"},
        {"ok": True, "public_endpoint": "[3fff::2]:1", "kept": False},
        {"ok": True, "public_endpoint": "[3fff::2]:1", "kept": "yes"},
        {"ok": True, "public_endpoint": ["[3fff::2]:1"], "kept": True},
        {"ok": True, "public_endpoint": 7, "kept": True},
    ],
)
def test_a_reply_that_does_not_say_it_kept_a_text_keeps_nothing(reply: dict[str, Any]) -> None:
    link = RegistryLink(generate_private_key(), REGISTRY_V4, None, first_counter=1)
    other = OtherFamily(link, Errands(link))
    other.endpoint = "[3fff::9]:9"
    other.answered(reply)
    assert other.endpoint is None


# -- pairs in the simulated network (tests/unit/netsim.py) ------------------------------

SETTLE_S = 60.0
"""Long enough for a path that would flap between the families to do so."""
PING_EVERY_S = 0.5


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    yield network
    network.registry.store.close()


def _direct_over(net: Network, alpha: SimNode, beta: SimNode) -> tuple[str, str]:
    """Trust both ways; both direct within TRUST_TO_DIRECT_S; each side's transport."""
    _trusting(net, alpha, beta)
    net.run_until(lambda: _both_direct(alpha, beta), TRUST_TO_DIRECT_S)
    return _transport(alpha, beta), _transport(beta, alpha)


def _transport(node: SimNode, peer: SimNode) -> str:
    state = node.device.peer(peer.device.public_key)
    assert state is not None and state.endpoint is not None
    return str(transport_of(state.endpoint))


def test_symmetric_v4_nats_and_v6_firewalls_go_direct_over_udp6(net: Network) -> None:
    alpha = net.node("alpha", mapping=Mapping.SYMMETRIC, ipv6=Ipv6.FIREWALL)
    beta = net.node("beta", mapping=Mapping.SYMMETRIC, ipv6=Ipv6.FIREWALL)
    assert _direct_over(net, alpha, beta) == ("udp6", "udp6")
    assert alpha.address6 is not None
    public = alpha.core.registration.describe(online=True)["public_endpoints"]
    assert public[1:] == [format_endpoint(alpha.address6)], public


def test_behind_nat66_the_public_v6_endpoint_the_registry_saw_goes_direct(
    net: Network,
) -> None:
    """A ULA behind NAT66 (symmetric IPv4 NATs too): the only way in is the public IPv6
    endpoint the node's family_endpoint showed the registry."""
    alpha = net.node("alpha", mapping=Mapping.SYMMETRIC, ipv6=Ipv6.NAT66)
    beta = net.node("beta", mapping=Mapping.SYMMETRIC, ipv6=Ipv6.NAT66)
    assert _direct_over(net, alpha, beta) == ("udp6", "udp6")
    assert alpha.nat6 is not None
    public = alpha.core.registration.describe(online=True)["public_endpoints"]
    assert public[1] == f"[{alpha.nat6.wan}]:{NODE_PORT}", public


def test_v6_that_never_answers_leaves_the_pair_direct_over_v4(net: Network) -> None:
    alpha = net.node("alpha", ipv6=Ipv6.FIREWALL)
    beta = net.node("beta", ipv6=Ipv6.FIREWALL)
    assert alpha.address6 is not None
    net.blackholes.add(alpha.address6[0])
    assert _direct_over(net, alpha, beta) == ("udp4", "udp4")
    net.run(SETTLE_S)
    assert (_transport(alpha, beta), _transport(beta, alpha)) == ("udp4", "udp4")
    assert _both_direct(alpha, beta)


def test_ipv6_that_works_one_way_only_leaves_both_directions_working(net: Network) -> None:
    """alpha's datagrams to beta over IPv6 are lost, beta's to alpha arrive (cone IPv4
    NATs): from the moment both are direct every ping goes through both ways. Before,
    beta's probes to alpha's IPv6 address kept moving alpha's endpoint there (roaming)
    for the rest of the round, and left it there: 18% of pings lost, and the pair fell
    back to the relay and came back every 35 s."""
    alpha = net.node("alpha", ipv6=Ipv6.FIREWALL)
    beta = net.node("beta", ipv6=Ipv6.FIREWALL)
    assert alpha.address6 is not None and beta.address6 is not None
    net.one_way_blocks.add((alpha.address6[0], beta.address6[0]))
    alpha.answers_pings = beta.answers_pings = True
    _direct_over(net, alpha, beta)
    for sequence in range(1, 1 + int(SETTLE_S / PING_EVERY_S)):
        assert _ping_arrives(net, alpha, beta, sequence, PING_EVERY_S), net.now
        assert _ping_arrives(net, beta, alpha, sequence, PING_EVERY_S), net.now


def test_with_both_families_working_the_path_settles_on_one(net: Network) -> None:
    alpha = net.node("alpha", ipv6=Ipv6.FIREWALL)
    beta = net.node("beta", ipv6=Ipv6.FIREWALL)
    _direct_over(net, alpha, beta)
    net.run(SETTLE_S)
    moves = [e for e in alpha.events + beta.events if isinstance(e, PathChanged)]
    assert [e.path for e in moves] == ["direct", "direct"], moves


def test_a_v4_only_node_and_a_dual_stack_node_pair_over_v4(net: Network) -> None:
    alpha = net.node("alpha", ipv6=Ipv6.FIREWALL)
    beta = net.node("beta")
    assert _direct_over(net, alpha, beta) == ("udp4", "udp4")
    assert beta.core.registration.describe(online=True)["public_endpoints"] == [
        beta.core.registration.public_endpoint
    ]


GARBAGE_CANDIDATES: list[object] = [
    "[3fff::2",
    "[3fff::2]",
    "[3fff::2]:",
    "[3fff::2]:99999",
    "[3fff::2]:-1",
    "[3fff::2]:0x10",
    "3fff::2]:1",
    "3fff::2:51820",
    "[3fff::zz]:1",
    "[3fff::2]:1\x00",
    " [3fff::2]:1",
    7,
    None,
    {"host": "3fff::2", "port": 1},
    b"[3fff::2]:1",
]


def test_garbage_or_truncated_v6_candidates_are_refused() -> None:
    usable, refused = usable_candidates(GARBAGE_CANDIDATES, [], [])
    assert usable == [] and refused == len(GARBAGE_CANDIDATES)


@pytest.mark.parametrize("candidates", ["[3fff::2]:1", {"[3fff::2]:1": 1}, None, 7])
def test_a_punch_whose_candidates_are_no_list_starts_no_round(
    net: Network, candidates: object
) -> None:
    alpha = net.node("alpha", ipv6=Ipv6.FIREWALL)
    beta = net.node("beta", ipv6=Ipv6.FIREWALL)
    _trusting(net, alpha, beta)
    alpha.core.paths.take_openers()
    punch = {"candidates": candidates}
    alpha.core.paths.punch(beta.device.public_key, punch, [], [], net.now)
    assert alpha.core.paths.take_openers() == []


def test_status_shows_the_public_endpoint_of_each_family() -> None:
    from pilotif.cli.main import _public_endpoints

    v6 = "[3fff:0:0:1::2]:51820"
    both = {"public_endpoint": "198.18.0.11:4000", "public_endpoints": ["198.18.0.11:4000", v6]}
    assert _public_endpoints(both) == f"198.18.0.11:4000, {v6}"
    assert _public_endpoints({"public_endpoint": "198.18.0.11:4000"}) == "198.18.0.11:4000"
    assert _public_endpoints({"public_endpoint": None, "public_endpoints": []}) == "None"
