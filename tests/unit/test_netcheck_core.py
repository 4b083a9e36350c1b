"""`pilotif netcheck`'s probing core against simulated networks: servers answer as the
registry and relays do (pilotif.control.probe_answer), a NAT gives our port one public
endpoint or one per destination, a path carries packets up to an MTU, answers come
late, out of order, not at all, or forged."""

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from pilotif.control.probe_answer import ANSWER_SIZE, pack_answer, probe_id_of
from pilotif.node.netcheck import (
    IPV4_UDP_HEADERS_BYTES,
    MTU_SIZES,
    RETRY_S,
    TRIES,
    NetcheckProbes,
    Server,
    ServerKind,
    UdpReport,
)
from pilotif.wg.events import Endpoint

START = 1000.0
REGISTRY = Server(ServerKind.REGISTRY, ("198.18.0.2", 7946))
REGISTRY_V6 = Server(ServerKind.REGISTRY, ("2001:db8::2", 7946))
RELAY_A = Server(ServerKind.RELAY, ("198.18.0.3", 7947))
RELAY_B = Server(ServerKind.RELAY, ("198.18.0.4", 7947))
PUBLIC_ADDRESS = "198.18.1.1"
ONE_WAY_S = {REGISTRY.endpoint: 0.010, RELAY_A.endpoint: 0.030, RELAY_B.endpoint: 0.005}
"""Half of each server's round trip."""
Arrival = tuple[float, bytes, Endpoint]
"""When a datagram arrives, what, and from where."""


@dataclass
class Network:
    """What lies between netcheck and its servers."""

    mtu: int = 1500
    """IPv4 packets larger than this are dropped on the way (no ICMP)."""
    symmetric: bool = False
    """A new public port for each destination (else one for all)."""
    hairpins: bool = False
    udp_blocked: bool = False
    v6_works: bool = False
    lose: Callable[[bytes, Endpoint], bool] = lambda data, to: False
    """Which datagrams are lost on the way out."""
    shuffle: random.Random | None = None
    """Deliver each batch of answers in a random order."""
    sent: list[tuple[float, bytes, Endpoint]] = field(default_factory=list)

    def public(self, to: Endpoint) -> Endpoint:
        if ":" in to[0]:
            return ("2001:db8::99", 4000)
        if not self.symmetric:
            return (PUBLIC_ADDRESS, 40000)
        return (PUBLIC_ADDRESS, 40000 + int(to[0].rsplit(".", 1)[1]))

    def arrives(self, data: bytes, to: Endpoint) -> bool:
        if self.lose(data, to):
            return False
        if ":" in to[0]:
            return self.v6_works
        return not self.udp_blocked and len(data) + IPV4_UDP_HEADERS_BYTES <= self.mtu

    def run(self, probes: NetcheckProbes) -> tuple[UdpReport, float]:
        """Drive the core to its end; the report and when it ended."""
        now = START
        pending: list[Arrival] = []
        while not probes.done(now):
            for data, to in probes.take_datagrams():
                self.sent.append((now, data, to))
                pending += self._answers(data, to, now)
            pending.sort()
            if self.shuffle is not None:
                self.shuffle.shuffle(pending)
            due = min([at for at, _, _ in pending] + [probes.get_timer()])
            now = max(now, due)
            arrived = [item for item in pending if item[0] <= now]
            pending = [item for item in pending if item[0] > now]
            for _, data, source in arrived:
                probes.receive(data, source, now)
            probes.handle_timer(now)
        return probes.report(), now

    def _answers(self, data: bytes, to: Endpoint, now: float) -> list[Arrival]:
        if not self.arrives(data, to):
            return []
        if to == self.public(REGISTRY.endpoint):
            return [(now + 0.001, data, to)] if self.hairpins else []
        one_way = ONE_WAY_S.get(to, 0.02)
        return [(now + 2 * one_way, pack_answer(data, self.public(to)), to)]


def probes(*servers: Server, mtu: bool = True, timeout_s: float = 5.0) -> NetcheckProbes:
    return NetcheckProbes(
        servers or (REGISTRY, RELAY_A, RELAY_B),
        START,
        timeout_s=timeout_s,
        mtu_target=REGISTRY.endpoint if mtu else None,
    )


def test_an_open_network_reports_udp_its_endpoint_round_trips_and_the_full_mtu() -> None:
    report, ended = Network(hairpins=True).run(probes())
    assert report.udp_v4 is True
    assert report.udp_v6 is None
    assert report.public_v4 == ((PUBLIC_ADDRESS, 40000),)
    assert report.mapping_varies is False
    assert report.hairpinning is True
    assert report.mtu == 1500
    assert [r.rtt_ms for r in report.servers] == [20.0, 60.0, 10.0]
    nearest = report.nearest_relay
    assert nearest is not None and nearest.server == RELAY_B
    assert ended < START + 1.0, "everything answered: no waiting for the deadline"


def test_answers_in_any_order_give_the_same_report() -> None:
    expected, _ = Network().run(probes())
    for seed in range(20):
        report, _ = Network(shuffle=random.Random(seed)).run(probes())
        assert report == expected


def test_a_symmetric_nat_maps_by_destination() -> None:
    report, _ = Network(symmetric=True).run(probes())
    assert report.mapping_varies is True
    assert len(report.public_v4) == 3


def test_with_one_server_answering_whether_the_mapping_varies_is_unknown() -> None:
    report, _ = Network().run(probes(REGISTRY))
    assert report.udp_v4 is True
    assert report.mapping_varies is None


def test_lost_answers_are_asked_again_with_a_new_id() -> None:
    first_tries: set[Endpoint] = set()

    def lose_first(data: bytes, to: Endpoint) -> bool:
        if to in first_tries:
            return False
        first_tries.add(to)
        return True

    network = Network(lose=lose_first)
    report, _ = network.run(probes(mtu=False))
    assert report.udp_v4 is True and report.mapping_varies is False
    to_registry = [probe_id_of(data) for _, data, to in network.sent if to == REGISTRY.endpoint]
    assert len(to_registry) == 2 and to_registry[0] != to_registry[1]
    [rtt] = [r.rtt_ms for r in report.servers if r.server == REGISTRY]
    assert rtt == 20.0, "timed from the try that was answered"


def test_blocked_udp_gives_up_after_its_tries_before_the_deadline() -> None:
    network = Network(udp_blocked=True)
    report, ended = network.run(probes())
    assert (report.udp_v4, report.mapping_varies, report.hairpinning, report.mtu) == (
        False,
        None,
        None,
        None,
    )
    assert all(r.rtt_ms is None and r.seen_from is None for r in report.servers)
    assert len(network.sent) == TRIES * (3 + len(MTU_SIZES))
    assert ended == START + RETRY_S * (2**TRIES - 1) < START + 5.0


def test_the_deadline_ends_the_run() -> None:
    _, ended = Network(udp_blocked=True).run(probes(timeout_s=1.0))
    assert ended == START + 1.0


@pytest.mark.parametrize(("path_mtu", "found"), [(1500, 1500), (1450, 1440), (1280, 1280)])
def test_the_mtu_is_the_largest_padded_probe_answered(path_mtu: int, found: int) -> None:
    network = Network(mtu=path_mtu)
    report, _ = network.run(probes(REGISTRY))
    assert report.mtu == found
    sizes = {len(data) + IPV4_UDP_HEADERS_BYTES for _, data, _ in network.sent}
    assert max(sizes) == MTU_SIZES[0]


def test_a_path_narrower_than_every_size_has_no_mtu_but_still_udp() -> None:
    report, _ = Network(mtu=1000).run(probes(REGISTRY))
    assert (report.udp_v4, report.mtu) == (True, None)


def test_a_nat_that_does_not_hairpin() -> None:
    report, _ = Network(hairpins=False).run(probes())
    assert report.hairpinning is False


def test_ipv6_answers_and_silence() -> None:
    both = (REGISTRY, REGISTRY_V6)
    report, _ = Network(v6_works=True).run(probes(*both))
    assert (report.udp_v4, report.udp_v6) == (True, True)
    assert report.public_v6 == (("2001:db8::99", 4000),)
    report, _ = Network(v6_works=False).run(probes(*both))
    assert report.udp_v6 is False


Forge = Callable[[bytes], tuple[bytes, Endpoint]]


@pytest.mark.parametrize(
    "forge",
    [
        lambda answer: (answer, ("198.18.66.6", 7946)),
        lambda answer: (answer[:-1], REGISTRY.endpoint),
        lambda answer: (answer[:4] + bytes(12) + answer[16:], REGISTRY.endpoint),
        lambda answer: (answer[:16] + b"\x05\xdc" + answer[18:], REGISTRY.endpoint),
        lambda answer: (b"\x99" + answer[1:], REGISTRY.endpoint),
        lambda answer: (bytes(ANSWER_SIZE), REGISTRY.endpoint),
        lambda answer: (b"", REGISTRY.endpoint),
    ],
    ids=[
        "from elsewhere",
        "truncated",
        "unknown id",
        "wrong size",
        "wrong type",
        "zeros",
        "empty",
    ],
)
def test_forged_and_garbage_answers_are_ignored_and_counted(forge: Forge) -> None:
    core = probes(REGISTRY, mtu=False)
    [(probe, to)] = core.take_datagrams()
    core.receive(*forge(pack_answer(probe, (PUBLIC_ADDRESS, 1))), START + 0.01)
    assert sum(core.ignored.values()) == 1
    assert core.report().udp_v4 is False
    core.receive(pack_answer(probe, (PUBLIC_ADDRESS, 1)), to, START + 0.02)
    assert core.report().udp_v4 is True


def test_a_probe_of_ours_that_is_not_the_hairpin_one_proves_nothing() -> None:
    core = probes(REGISTRY, mtu=False)
    [(probe, to)] = core.take_datagrams()
    core.receive(probe, to, START + 0.01)
    core.receive(pack_answer(probe, (PUBLIC_ADDRESS, 1)), to, START + 0.02)
    [(hairpin, _)] = core.take_datagrams()
    core.receive(hairpin[:-1], (PUBLIC_ADDRESS, 1), START + 0.03)
    assert core.report().hairpinning is False
    assert core.ignored == {"unknown_probe": 1, "malformed": 1}
