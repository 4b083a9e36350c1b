"""Issue 26 item 4 on the simulated network (tests/unit/netsim.py): two nodes behind
symmetric NATs, relayed by a standalone relay, keep talking while the registry is away,
also when one of them restarts then (it starts from its node cache: the relays and its
home relay's tickets, expired ones left out); a node that lost the registry asks it
nothing but its probes. No sockets, no root."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pilotif.control.tickets import TICKET_LIFETIME_S
from pilotif.control.wire import KEY_REQUEST
from pilotif.node.cache import NODE_CACHE_FILE, NodeCache, NodeSnapshot
from pilotif.node.events import RegistryRegained, RelayTicketsTaken, StartedWithoutRegistry
from pilotif.node.registration import PROBE_JITTER, PROBE_MAX_S
from pilotif.node.relays import TICKET_REFRESH_S
from pilotif.util.files import StateFileError
from tests.unit.netsim import LOST_WITHIN_S, NODE_PORT, Network, SimNode
from tests.unit.test_node_core import _seconds_until_a_ping_arrives
from tests.unit.test_node_relays import symmetric_pair
from tests.unit.test_registry_outage import SETTLE_S

RELAYED_WITHIN_S = 5.0
"""A generous bound for a relayed ping after a restart (attach, tickets, handshake)."""
BACK_WITHIN_S = 5.0


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, relays=2)
    yield network
    network.registry.store.close()


def _relayed_pair(net: Network) -> tuple[SimNode, SimNode]:
    alpha, beta = symmetric_pair(net)
    assert _seconds_until_a_ping_arrives(net, alpha, beta) < RELAYED_WITHIN_S
    assert alpha.path_to(beta) == "relay"
    return alpha, beta


def _kept(net: Network, tmp_path: Path) -> tuple[NodeSnapshot, Path, dict[str, Any]]:
    """A relayed node's cache: its snapshot, the file, and the file's JSON to damage."""
    alpha, _ = _relayed_pair(net)
    snapshot = alpha.core.snapshot(NODE_PORT)
    assert snapshot is not None and snapshot.tickets is not None
    NodeCache(tmp_path).save(snapshot)
    path = tmp_path / NODE_CACHE_FILE
    return snapshot, path, json.loads(path.read_text())


def _registry_lost(net: Network, *nodes: SimNode) -> None:
    net.registry_down = True
    net.run_until(
        lambda: not any(node.core.registry_online for node in nodes),
        LOST_WITHIN_S,
    )


def _pings_both_ways(net: Network, alpha: SimNode, beta: SimNode) -> None:
    assert _seconds_until_a_ping_arrives(net, alpha, beta) < RELAYED_WITHIN_S
    assert _seconds_until_a_ping_arrives(net, beta, alpha) < RELAYED_WITHIN_S


def test_a_node_restarted_while_the_registry_is_down_reaches_its_relayed_peer(
    net: Network, tmp_path: Path
) -> None:
    alpha, beta = _relayed_pair(net)
    cache = NodeCache(tmp_path)
    snapshot = alpha.core.snapshot(NODE_PORT)
    assert snapshot is not None and snapshot.relays == net.relay_infos
    assert snapshot.tickets is not None and len(snapshot.tickets.tickets) == 1
    cache.save(snapshot)
    _registry_lost(net, alpha, beta)
    alpha.restart(port=NODE_PORT + 1)
    net.run(1.0)
    kept = NodeCache(tmp_path).load(net.now)
    assert kept == snapshot
    alpha.core.resume(kept, net.now)
    alpha.flush()
    _pings_both_ways(net, alpha, beta)
    assert alpha.path_to(beta) == "relay"
    [started] = [e for e in alpha.events if isinstance(e, StartedWithoutRegistry)]
    assert (started.peers, started.relays, started.tickets) == (1, 2, 1)
    # The registry comes back (a new process): both register, alpha gets new tickets.
    net.restart_registry()
    net.registry_down = False
    net.run_until(lambda: alpha.core.registry_online and beta.core.registry_online, BACK_WITHIN_S)
    old_tickets = snapshot.tickets.tickets
    net.run_until(lambda: alpha.core.relays.home_tickets() != old_tickets, BACK_WITHIN_S)
    regained = [i for i, e in enumerate(alpha.events) if isinstance(e, RegistryRegained)]
    taken = [i for i, e in enumerate(alpha.events) if isinstance(e, RelayTicketsTaken)]
    assert regained and taken[-1] > regained[0]
    _pings_both_ways(net, alpha, beta)


def test_a_peer_untrusted_during_the_outage_gets_no_kept_ticket_after_a_restart(
    net: Network,
) -> None:
    """The node cache still holds the home relay's ticket for beta after alpha untrusted
    beta while the registry was away: the restarted alpha does not present it."""
    alpha, beta = _relayed_pair(net)
    _registry_lost(net, alpha, beta)
    alpha.call("untrust", peer=beta.key)
    net.run(1.0)
    snapshot = alpha.core.snapshot(NODE_PORT)
    assert snapshot is not None and snapshot.peers == ()
    assert snapshot.tickets is not None and len(snapshot.tickets.tickets) == 1
    alpha.restart(port=NODE_PORT + 1)
    net.run(1.0)
    restarted = len(alpha.events)
    alpha.core.resume(snapshot, net.now)
    alpha.flush()
    net.run(RELAYED_WITHIN_S)
    events = alpha.events[restarted:]
    [started] = [e for e in events if isinstance(e, StartedWithoutRegistry)]
    assert (started.peers, started.relays, started.tickets) == (0, 2, 0)
    assert not [e for e in events if isinstance(e, RelayTicketsTaken)]
    assert alpha.core.relays.home is not None and alpha.core.relays.home_tickets() == ()


def test_a_relayed_node_that_stays_up_keeps_its_peer_and_asks_only_probes(
    net: Network,
) -> None:
    """Past TICKET_REFRESH_S into the outage the tickets are due again: the node does not
    ask a registry that is away for them (it sent a sealed request a second before)."""
    alpha, beta = _relayed_pair(net)
    _registry_lost(net, alpha, beta)
    net.run(SETTLE_S)
    sent: list[tuple[float, bytes]] = []
    alpha.sent_to_registry = sent
    net.run(TICKET_REFRESH_S + 10)
    assert sent and {data for _, data in sent} == {KEY_REQUEST}
    _pings_both_ways(net, alpha, beta)
    # Back (not restarted: its next probe finds it): the tickets that were due are
    # fetched at once.
    taken = len([e for e in alpha.events if isinstance(e, RelayTicketsTaken)])
    net.registry_down = False
    net.run_until(
        lambda: len([e for e in alpha.events if isinstance(e, RelayTicketsTaken)]) > taken,
        PROBE_MAX_S * (1 + PROBE_JITTER) + BACK_WITHIN_S,
    )
    assert alpha.core.registry_online
    _pings_both_ways(net, alpha, beta)


def test_kept_tickets_that_expired_are_left_out(net: Network, tmp_path: Path) -> None:
    snapshot, _, _ = _kept(net, tmp_path)
    later = NodeCache(tmp_path).load(net.now + TICKET_LIFETIME_S)
    assert later is not None and later.tickets is None
    assert later.relays == snapshot.relays and later.peers == snapshot.peers
    assert NodeCache(tmp_path).load(net.now + TICKET_LIFETIME_S - 10) == snapshot


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("relays", "198.18.1.1:7947"),
        ("relays", [{"key": "short", "endpoint": "198.18.1.1:7947"}]),
        ("relays", [{"key": None}]),
        ("relays", [["not", "a", "relay"]]),
        ("tickets", "garbage"),
        ("tickets", {"relay": {"key": "x", "endpoint": "y"}, "tickets": ["AAAA"]}),
        ("tickets", {"tickets": []}),
        ("tickets", {"relay": None, "tickets": None}),
    ],
)
def test_a_damaged_relay_section_is_one_error_naming_the_file(
    net: Network, tmp_path: Path, key: str, value: object
) -> None:
    _, path, document = _kept(net, tmp_path)
    document[key] = value
    path.write_text(json.dumps(document))
    with pytest.raises(StateFileError) as error:
        NodeCache(tmp_path).load(net.now)
    assert str(path) in str(error.value)


def test_a_kept_ticket_that_is_no_ticket_is_dropped(net: Network, tmp_path: Path) -> None:
    snapshot, path, document = _kept(net, tmp_path)
    good = document["tickets"]["tickets"][0]
    document["tickets"]["tickets"] = ["AAAA", 7, None, good[:-4], good]
    path.write_text(json.dumps(document))
    loaded = NodeCache(tmp_path).load(net.now)
    assert loaded is not None and loaded.tickets == snapshot.tickets
    # Truncated: no JSON at all.
    path.write_text(path.read_text()[:100])
    with pytest.raises(StateFileError):
        NodeCache(tmp_path).load(net.now)


def test_an_older_cache_without_relays_still_loads(net: Network, tmp_path: Path) -> None:
    snapshot, path, document = _kept(net, tmp_path)
    del document["relays"], document["tickets"]
    path.write_text(json.dumps(document))
    loaded = NodeCache(tmp_path).load(net.now)
    assert loaded is not None and loaded.relays == () and loaded.tickets is None
    assert loaded.peers == snapshot.peers
