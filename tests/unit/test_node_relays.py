"""Standalone relays in the simulated network (tests/unit/netsim.py): nodes behind
symmetric NATs attach to every relay the registry names, send through the nearest, and
move to the next within seconds when it dies; the relay carries only pairs the
registry's tickets vouch for. No sockets, no root."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotif.control.relay_info import RelayInfo
from pilotif.control.wire import CONTROL_TYPE, RELAY_SOURCE_UNKNOWN, pack_relay
from pilotif.node.events import RelaysChanged
from pilotif.node.registry_link import REQUEST_ATTEMPTS
from pilotif.node.relays import ATTACH_ACTIVE_S, NOTICE_ATTACH_MIN_S, SILENT_AFTER_S, Relays
from pilotif.relay.core import RelayCore
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.events import Endpoint
from tests.unit.netsim import Mapping, Network, SimNode
from tests.unit.test_node_core import _ping_arrives, _seconds_until_a_ping_arrives, _trusting

FAR_MS = 0.030
"""The extra one-way delay to the second relay (the first is the nearest)."""


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, relays=2)
    yield network
    network.registry.store.close()


def symmetric_pair(net: Network) -> tuple[SimNode, SimNode]:
    alpha = net.node("alpha", mapping=Mapping.SYMMETRIC)
    beta = net.node("beta", mapping=Mapping.SYMMETRIC)
    far = net.relay_infos[1].endpoint[0]
    for nat in net.nats.values():
        net.delays[(nat.wan, far)] = net.delays[(far, nat.wan)] = FAR_MS
    _trusting(net, alpha, beta)
    net.run(1.0)
    return alpha, beta


def home(node: SimNode) -> Endpoint | None:
    relay = node.core.relays.home
    return relay.endpoint if relay is not None else None


def test_a_symmetric_pair_talks_through_the_nearest_relay(net: Network) -> None:
    alpha, beta = symmetric_pair(net)
    near, far = (info.endpoint for info in net.relay_infos)
    assert home(alpha) == home(beta) == near
    for sequence in range(1, 6):
        assert _ping_arrives(net, alpha, beta, sequence)
    assert alpha.path_to(beta) == "relay"
    assert net.relays[near].counters["relayed_packets"] >= 5
    assert net.relays[far].counters["relayed_packets"] == 0
    assert net.registry.counters["relayed_packets"] == 0
    changed = [e for e in alpha.events if isinstance(e, RelaysChanged)]
    assert changed[-1].home == f"{near[0]}:{near[1]}"
    status = {r["endpoint"]: r for r in alpha.core.status()["relays"]}
    assert status[f"{near[0]}:{near[1]}"]["home"] is True
    assert status[f"{far[0]}:{far[1]}"]["rtt_ms"] > status[f"{near[0]}:{near[1]}"]["rtt_ms"]


def test_a_dead_home_relay_is_replaced_within_seconds(net: Network) -> None:
    alpha, beta = symmetric_pair(net)
    near, far = (info.endpoint for info in net.relay_infos)
    assert _ping_arrives(net, alpha, beta, 1)
    net.relays_down.add(near)
    took = _seconds_until_a_ping_arrives(net, alpha, beta)
    assert home(alpha) == home(beta) == far
    assert took <= ATTACH_ACTIVE_S + SILENT_AFTER_S + 2.0, took
    assert net.relays[far].counters["relayed_packets"] >= 1
    assert alpha.path_to(beta) == "relay"


def test_a_relay_that_restarted_gets_the_tickets_again(net: Network) -> None:
    alpha, beta = symmetric_pair(net)
    near = net.relay_infos[0].endpoint
    net.restart_relay(0)
    took = _seconds_until_a_ping_arrives(net, alpha, beta)
    assert took <= ATTACH_ACTIVE_S + 2.0, took
    assert home(alpha) == near
    assert net.relays[near].counters["relayed_packets"] >= 1


def test_with_every_relay_gone_the_registry_relays(net: Network) -> None:
    alpha, beta = symmetric_pair(net)
    net.relays_down.update(net.relays)
    _seconds_until_a_ping_arrives(net, alpha, beta)
    assert home(alpha) is None
    assert net.registry.counters["relayed_packets"] >= 1


def test_a_peer_trusted_later_is_relayed_too(net: Network) -> None:
    alpha, _ = symmetric_pair(net)
    gamma = net.node("gamma", mapping=Mapping.SYMMETRIC)
    net.up(gamma)
    net.trust(gamma, alpha)
    net.run_until(lambda: gamma.device.public_key in alpha.core.peers, 5.0)
    net.run(1.0)
    assert _seconds_until_a_ping_arrives(net, alpha, gamma) < 3.0
    assert _seconds_until_a_ping_arrives(net, gamma, alpha) < 3.0
    assert net.registry.counters["relayed_packets"] == 0


def test_a_node_that_is_not_trusted_cannot_use_the_relay(net: Network) -> None:
    _, beta = symmetric_pair(net)
    mallory = net.node("mallory", mapping=Mapping.SYMMETRIC)
    net.up(mallory)
    net.run(1.0)
    near = net.relay_infos[0].endpoint
    assert home(mallory) == near
    before = len(beta.received)
    refused = net.relays[near].counters["relay_not_trusted"]
    for _ in range(3):
        # What mallory's device would send to beta, wrapped for the relay by hand.
        net.send(mallory, pack_relay(beta.device.public_key, b"\x01" + bytes(147)), near)
        net.run(0.2)
    assert net.relays[near].counters["relay_not_trusted"] == refused + 3
    assert len(beta.received) == before


SPOOF_RATE_PER_S = 1_000
SPOOF_FOR_S = 10.0
NODE_AT: Endpoint = ("198.18.3.1", 51820)
FIRST_ATTACH_DATAGRAMS = 3
"""A node's first attach, sent again with the relay's cookie, then once more naming the
relay's instance."""


def _spoofed_notices(relay: RelayCore | None) -> tuple[Relays, int]:
    """A node attached to one relay (`relay` answers its attaches; None: silent) gets
    SPOOF_RATE_PER_S spoofed 0x55 notices from the relay's address for SPOOF_FOR_S;
    the node's relays, and how many attaches it sent."""
    relay_key = relay.public_key if relay is not None else public_key(generate_private_key())
    info = RelayInfo(relay_key, ("198.18.1.1", 7947))
    relays = Relays(generate_private_key())
    now = 1_700_000_000.0
    relays.update([info], now)
    attaches = 0
    for _ in range(int(SPOOF_FOR_S * SPOOF_RATE_PER_S)):
        now += 1 / SPOOF_RATE_PER_S
        relays.receive(RELAY_SOURCE_UNKNOWN, info.endpoint, now)
        relays.handle_timer(now)
        while relays.outgoing:
            data, to = relays.outgoing.pop(0)
            assert to == info.endpoint
            attaches += data[0] == CONTROL_TYPE
            for answer, _ in relay.handle_datagram(data, NODE_AT, now) if relay else []:
                relays.receive(answer, info.endpoint, now)
    return relays, attaches


def test_spoofed_relay_notices_cost_one_attach_per_interval() -> None:
    """Issue 22: each 4-byte 0x55 spoofed from a relay's address made the node send a
    sealed attach (retried 5 times): x234. A live relay answers every attach, and the
    node still attaches at most once per NOTICE_ATTACH_MIN_S (its first attach aside)."""
    relay = RelayCore(generate_private_key(), public_key(generate_private_key()), first_counter=0)
    relays, attaches = _spoofed_notices(relay)
    assert attaches <= FIRST_ATTACH_DATAGRAMS + SPOOF_FOR_S / NOTICE_ATTACH_MIN_S, attaches
    assert relays.describe()[0]["alive"] is True, "the relay is still used"


def test_spoofed_notices_about_a_silent_relay_leave_one_attach_waiting() -> None:
    """A relay that answers nothing: the notices coalesce into the attach that waits,
    and what waits stays bounded."""
    relays, attaches = _spoofed_notices(None)
    rounds = SPOOF_FOR_S / NOTICE_ATTACH_MIN_S + 1
    assert attaches <= rounds * REQUEST_ATTEMPTS, attaches
    [state] = relays._relays.values()
    assert len(state.waiting) <= 1
    assert len(state.link._pending) <= 1
