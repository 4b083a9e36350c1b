"""What a node's return costs a registry that restarted while the node was away (issue
26: a fleet comes back at once, so each return must be cheap): the node that probed the
silence goes above the floor the registry stored for it and is served in two datagrams
with one X25519; a node that did not notice costs one stale-counter notice, still one
X25519."""

from collections.abc import Callable
from pathlib import Path

import pytest
from test_registry_link import ALICE, REGISTRY, Pair, register

from pilotif.control import wire
from pilotif.control.wire import KEY_REQUEST
from pilotif.node.registry_link import KeyAnswer, RegistryLink, Reply
from pilotif.registry.core import RegistryCore
from pilotif.wg.crypto import generate_private_key

HEARTBEATS = 3
LATER_COUNTER = 10**9
"""The restarted registry's first counter (its CounterLease starts above the old one)."""


@pytest.fixture
def key_agreements(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The remote keys of every X25519 a control channel computes from now on."""
    seen: list[bytes] = []
    real: Callable[[bytes, bytes], bytes] = wire.dh

    def counted(private: bytes, remote: bytes) -> bytes:
        seen.append(remote)
        return real(private, remote)

    monkeypatch.setattr(wire, "dh", counted)
    return seen


def _registered(pair: Pair) -> RegistryLink:
    link = pair.link(generate_private_key())
    for _ in range(HEARTBEATS):
        register(pair, link, ALICE, "alice")
        pair.now += 20
    return link


def _restart(pair: Pair) -> None:
    pair.store.flush()
    pair.core = RegistryCore(pair.registry_private, pair.store, first_counter=LATER_COUNTER)
    pair.now += 120


def _registry_work(pair: Pair, link: RegistryLink) -> tuple[int, bool]:
    """Register once more; the datagrams the node sent and whether it was served."""
    request_id = link.request("register", {"hostname": "alice", "tags": [], "lan": []}, pair.now)
    sent = 0
    served = False
    while link.outgoing:
        batch, link.outgoing = link.outgoing, []
        for datagram, _ in batch:
            sent += 1
            for answer, _ in pair.core.handle_datagram(datagram, ALICE, pair.now):
                for event in link.receive(answer, pair.now):
                    served |= isinstance(event, Reply) and event.request_id == request_id
    return sent, served


def test_a_node_whose_probe_was_answered_returns_in_two_datagrams_and_one_x25519(
    tmp_path: Path, key_agreements: list[bytes]
) -> None:
    pair = Pair(tmp_path)
    link = _registered(pair)
    _restart(pair)
    link.probe()
    [(probe, _)] = link.outgoing
    link.outgoing.clear()
    assert probe == KEY_REQUEST
    [(answer, _)] = pair.core.handle_datagram(probe, ALICE, pair.now)
    assert isinstance(link.receive(answer, pair.now, REGISTRY)[0], KeyAnswer)
    key_agreements.clear()
    # The cookie reply (the restarted registry has a new secret), then the registration.
    assert _registry_work(pair, link) == (2, True)
    assert pair.core.counters["stale_counter"] == 0
    assert len(key_agreements) == 1


def test_a_node_below_the_restarted_registrys_floor_costs_one_x25519(
    tmp_path: Path, key_agreements: list[bytes]
) -> None:
    pair = Pair(tmp_path)
    link = _registered(pair)
    _restart(pair)
    key_agreements.clear()
    # Cookie reply, stale-counter notice, then served above the floor.
    assert _registry_work(pair, link) == (3, True)
    assert pair.core.counters["stale_counter"] == 1
    assert len(key_agreements) == 1


def test_a_probe_answered_at_start_up_does_not_move_the_counter(tmp_path: Path) -> None:
    """Only the answer to a probe (a silence) jumps the counter; the key fetched at start
    does not, and neither does a key answer nobody asked for."""
    pair = Pair(tmp_path)
    link = RegistryLink(generate_private_key(), REGISTRY, None, first_counter=7)
    link.fetch_key(pair.now)
    [(request, _)] = link.outgoing
    link.outgoing.clear()
    [(answer, _)] = pair.core.handle_datagram(request, ALICE, pair.now)
    assert isinstance(link.receive(answer, pair.now, REGISTRY)[0], KeyAnswer)
    assert link.receive(answer, pair.now, REGISTRY) == []
    assert link.counter == 7
