"""Issue 26 items 3 and 4 on the simulated network (tests/unit/netsim.py): while the
registry is away a node sends it one small probe about every second (jittered, however
long the outage), registers in full once a probe is answered, and forged or stray answers
change nothing. No sockets, no root."""

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotif.control.wire import CONTROL_TYPE, KEY_REQUEST, KEY_REQUEST_TYPE, pack_key_reply
from pilotif.node.events import RegistryKeyRefused, RegistryRegained, RegistrySwitched
from pilotif.node.registration import PROBE_EVERY_S, PROBE_JITTER
from pilotif.node.registry_link import REGISTER_INTERVAL_S, REQUEST_ATTEMPTS, REQUEST_RETRY_S
from pilotif.wg.crypto import generate_private_key, public_key
from tests.unit.netsim import REGISTRY, Network, SimNode
from tests.unit.test_node_replicas import REPLICA_A, REPLICA_B, Joined

LONG_OUTAGE_S = 600.0
"""Longer than any back-off the node had (120 s of retries, then every 20 s)."""
PROBES_WATCHED = 200
SETTLE_S = REQUEST_ATTEMPTS * REQUEST_RETRY_S + 1
"""Until the registration that was on its way when the registry went gives up."""


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    yield network
    network.registry.store.close()


def _away(net: Network, node: SimNode) -> list[tuple[float, bytes]]:
    """Stop the registry, wait until `node` takes it for lost; from then on, what the node
    sends to the registry's address (the list returned fills as the network runs)."""
    net.registry_down = True
    net.run_until(lambda: not node.core.registry_online, REGISTER_INTERVAL_S + SETTLE_S)
    net.run(SETTLE_S)
    sent: list[tuple[float, bytes]] = []
    node.sent_to_registry = sent
    return sent


def test_probes_while_away_are_small_jittered_and_about_one_a_second(net: Network) -> None:
    alpha = net.node("alpha")
    net.up(alpha)
    alpha.core.registration.rng.seed(7)
    sent = _away(net, alpha)
    net.run(PROBES_WATCHED * PROBE_EVERY_S)
    assert {data for _, data in sent} == {KEY_REQUEST}
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(sent)]
    shortest, longest = PROBE_EVERY_S * (1 - PROBE_JITTER), PROBE_EVERY_S * (1 + PROBE_JITTER)
    assert all(shortest - 1e-9 <= gap <= longest + 1e-9 for gap in gaps), (min(gaps), max(gaps))
    # Jittered: spread over the range, not one fixed pause.
    assert max(gaps) - min(gaps) > PROBE_JITTER * PROBE_EVERY_S
    assert abs(sum(gaps) / len(gaps) - PROBE_EVERY_S) < 0.05


def test_the_probe_rate_stays_the_same_however_long_the_outage(net: Network) -> None:
    alpha = net.node("alpha")
    net.up(alpha)
    sent = _away(net, alpha)
    net.run(LONG_OUTAGE_S)
    late = [when for when, _ in sent if when >= net.now - REGISTER_INTERVAL_S * 2]
    assert len(late) >= REGISTER_INTERVAL_S * 2 / (PROBE_EVERY_S * (1 + PROBE_JITTER)) - 1
    net.registry_down = False
    back_at = net.now
    net.run_until(lambda: alpha.core.registry_online, 10.0)
    assert net.now - back_at <= PROBE_EVERY_S * (1 + PROBE_JITTER) + 0.1


def test_an_answered_probe_brings_one_registration_and_the_probes_stop(net: Network) -> None:
    alpha = net.node("alpha")
    net.up(alpha)
    sent = _away(net, alpha)
    net.run(30.0)
    net.restart_registry()
    net.registry_down = False
    net.run_until(lambda: alpha.core.registry_online, 10.0)
    back = len(sent)
    assert any(isinstance(e, RegistryRegained) for e in alpha.events)
    assert alpha.core.registration.probe_s is None
    net.run(REGISTER_INTERVAL_S * 2 + 1)
    after = sent[back:]
    # Back to the heartbeat: two registrations (sealed), no probe.
    assert KEY_REQUEST not in {data for _, data in after}
    assert len(after) == 2, [len(data) for _, data in after]
    # One registration when a probe is answered (what follows its reply, the trust
    # list, comes a round trip later), and no probe after it.
    sealed = [(when, data) for when, data in sent[:back] if data != KEY_REQUEST]
    assert len([when for when, _ in sealed if when == sealed[0][0]]) == 1
    last_probe = max(when for when, data in sent if data == KEY_REQUEST)
    assert last_probe <= sealed[0][0]


def test_a_registry_that_comes_back_with_another_key_is_said_once_and_still_probed(
    net: Network,
) -> None:
    alpha = net.node("alpha")
    net.up(alpha)
    sent = _away(net, alpha)
    net.restart_registry(new_key=True)
    net.registry_down = False
    net.run(30.0)
    refused = [e for e in alpha.events if isinstance(e, RegistryKeyRefused)]
    assert len(refused) == 1
    assert not alpha.core.registry_online
    assert {data for _, data in sent} == {KEY_REQUEST}
    assert len(sent) >= 30.0 / (PROBE_EVERY_S * (1 + PROBE_JITTER)) - 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda key: pack_key_reply(key), id="from-elsewhere"),
        pytest.param(lambda key: pack_key_reply(key)[:-1], id="truncated"),
        pytest.param(lambda key: pack_key_reply(key) + b"x", id="long"),
        pytest.param(lambda key: bytes((KEY_REQUEST_TYPE,)) + bytes(99), id="garbage"),
    ],
)
def test_forged_or_stray_probe_answers_change_nothing(net: Network, answer: object) -> None:
    """Only a well-formed key reply from an address a probe went to counts; anything
    else is dropped and counted, and the node goes on probing."""
    alpha = net.node("alpha")
    net.up(alpha)
    sent = _away(net, alpha)
    net.run(3.0)
    assert callable(answer)
    datagram = answer(net.registry.public_key)
    elsewhere = ("198.18.99.9", REGISTRY[1])
    source = elsewhere if len(datagram) == len(pack_key_reply(bytes(32))) else REGISTRY
    dropped = alpha.core.link.dropped
    alpha.core.receive_control(datagram, net.now, source)
    alpha.flush()
    assert alpha.core.link.dropped == dropped + 1
    probes = len(sent)
    net.run(3.0)
    assert not alpha.core.registry_online
    assert len(sent) > probes and {data for _, data in sent} == {KEY_REQUEST}


def test_a_key_reply_nobody_asked_for_is_dropped(net: Network) -> None:
    """While the registry answers, a key reply (e.g. a replayed one) asks for nothing."""
    alpha = net.node("alpha")
    net.up(alpha)
    dropped = alpha.core.link.dropped
    alpha.core.receive_control(pack_key_reply(public_key(generate_private_key())), net.now)
    alpha.flush()
    assert alpha.core.link.dropped == dropped + 1
    assert alpha.core.registration.key_refused is None
    assert alpha.core.registry_online


def test_with_replicas_the_probes_take_turns_and_the_one_that_answers_gets_the_node(
    tmp_path: Path,
) -> None:
    """Every replica silent: the probes go to each in turn, so a node whose replica stays
    dead registers with the first one back."""
    joined = Joined(tmp_path)
    core = joined.core
    now = joined.now
    while core.registry_online or core.registration.probe_s is None:
        now = core.get_timer() or now + 1.0
        core.handle_timer(now)
        core.datagrams_to_send()
        assert now - joined.now < REGISTER_INTERVAL_S * 3, "never took the registry for lost"
    probed = []
    for _ in range(6):
        now = core.get_timer() or now + 1.0
        core.handle_timer(now)
        probed += [to for data, to in core.datagrams_to_send() if data == KEY_REQUEST]
    assert probed == [REPLICA_A, REPLICA_B] * 3 or probed == [REPLICA_B, REPLICA_A] * 3
    core.receive_control(pack_key_reply(public_key(joined.registry_key)), now, REPLICA_B)
    sent = core.datagrams_to_send()
    assert core.link.endpoint == REPLICA_B
    assert [to for data, to in sent if data[:1] == bytes((CONTROL_TYPE,))] == [REPLICA_B]
    assert [e for e in core.events if isinstance(e, RegistrySwitched)]
    assert core.registration.probe_s is None
