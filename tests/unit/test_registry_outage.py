"""Issue 26 items 3 and 4 on the simulated network (tests/unit/netsim.py): while the
registry is away a node sends it one small probe, about every second at first and then
less often (a tenth of the outage so far, at most PROBE_MAX_S, jittered); a restarted
registry tells the nodes it knew that it is back, so they are back within about a
second however long the outage; a registry back without a restart is found by the
probes; forged or stray answers change nothing. No sockets, no root."""

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotif.control.wire import CONTROL_TYPE, KEY_REQUEST, KEY_REQUEST_TYPE, pack_key_reply
from pilotif.node.events import RegistryKeyRefused, RegistryRegained, RegistrySwitched
from pilotif.node.registration import (
    HEARTBEAT_JITTER,
    PROBE_BACKOFF,
    PROBE_EVERY_S,
    PROBE_JITTER,
    PROBE_MAX_S,
    probe_pause_s,
)
from pilotif.node.registry_link import REGISTER_INTERVAL_S, REQUEST_ATTEMPTS, REQUEST_RETRY_S
from pilotif.wg.crypto import generate_private_key, public_key
from tests.unit.netsim import LOST_WITHIN_S, REGISTRY, Network, SimNode
from tests.unit.test_node_replicas import REPLICA_A, REPLICA_B, Joined

LONG_OUTAGE_S = 600.0
"""Long enough for the probes to have backed off to PROBE_MAX_S."""
SETTLE_S = REQUEST_ATTEMPTS * REQUEST_RETRY_S + 1
"""Until the registration that was on its way when the registry went gives up."""
LONGEST_PAUSE_S = PROBE_MAX_S * (1 + PROBE_JITTER)
RETURN_S = 1.0
"""How soon after a restarted registry's return a node it knew is back (the recall, a
round trip, the registration)."""


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path)
    yield network
    network.registry.store.close()


def _away(net: Network, node: SimNode) -> list[tuple[float, bytes]]:
    """Stop the registry, wait until `node` takes it for lost; from then on, what the node
    sends to the registry's address (the list returned fills as the network runs)."""
    net.registry_down = True
    net.run_until(lambda: not node.core.registry_online, LOST_WITHIN_S)
    net.run(SETTLE_S)
    sent: list[tuple[float, bytes]] = []
    node.sent_to_registry = sent
    return sent


def test_probes_while_away_are_small_jittered_and_back_off_to_one_in_ten_seconds(
    net: Network,
) -> None:
    alpha = net.node("alpha")
    net.up(alpha)
    alpha.core.registration.rng.seed(7)
    sent = _away(net, alpha)
    lost_at = alpha.core.registration.lost_s
    assert lost_at is not None
    net.run(LONG_OUTAGE_S)
    assert {data for _, data in sent} == {KEY_REQUEST}
    pauses = []
    for (earlier, _), (later, _) in itertools.pairwise(sent):
        mean = min(max((earlier - lost_at) * PROBE_BACKOFF, PROBE_EVERY_S), PROBE_MAX_S)
        pauses.append((later - earlier) / mean)
        assert later - earlier <= LONGEST_PAUSE_S + 1e-9
    # Each pause is the mean of its moment, jittered: spread over the range.
    assert all(1 - PROBE_JITTER - 1e-9 <= p <= 1 + PROBE_JITTER + 1e-9 for p in pauses)
    assert max(pauses) - min(pauses) > PROBE_JITTER
    # At first about a second apart; after the first minutes, about PROBE_MAX_S.
    early = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(sent[:4])]
    assert all(gap <= PROBE_EVERY_S * (1 + PROBE_JITTER) * 1.5 for gap in early), early
    late = [when for when, _ in sent if when >= net.now - LONG_OUTAGE_S / 2]
    per_s = len(late) / (LONG_OUTAGE_S / 2)
    assert 1 / LONGEST_PAUSE_S <= per_s <= 1 / (PROBE_MAX_S * (1 - PROBE_JITTER)), per_s


def test_a_registry_that_answers_probes_but_not_registrations_is_not_hammered(
    net: Network,
) -> None:
    """Its process runs but its database is down (or it sheds silently): each answered
    probe brings a registration that goes unanswered. The probes keep backing off from
    the first silence, so the node sends about one probe and one registration's
    attempts per PROBE_MAX_S (before: a probe and a registration's attempts every few
    seconds, 1.2 datagrams a second)."""
    alpha = net.node("alpha")
    net.up(alpha)
    sent = _away(net, alpha)
    registry = net.registry
    answer = registry.handle_datagram
    registry.handle_datagram = lambda data, source, now: (  # type: ignore[method-assign]
        answer(data, source, now) if data == KEY_REQUEST else []
    )
    net.registry_down = False
    net.run(LONG_OUTAGE_S)
    late = [data for when, data in sent if when >= net.now - LONG_OUTAGE_S / 2]
    probes = late.count(KEY_REQUEST)
    assert probes <= LONG_OUTAGE_S / 2 / (PROBE_MAX_S * (1 - PROBE_JITTER)) + 1, probes
    # Per answered probe, the registration's attempts (and a request that waited).
    assert len(late) - probes <= probes * (REQUEST_ATTEMPTS + 1), len(late)
    assert not alpha.core.registry_online


def test_with_replicas_each_address_is_probed_often_enough_to_keep_its_mapping() -> None:
    """Probed in turn, each of three replicas still hears a node at least every
    PROBE_MAX_S (give or take the jitter): its NAT mapping towards each stays open."""
    rng = random.Random(3)
    longest = max(probe_pause_s(3600.0, rng, 3) for _ in range(1000))
    assert 3 * longest <= PROBE_MAX_S * (1 + PROBE_JITTER)
    assert max(probe_pause_s(3600.0, rng) for _ in range(1000)) > PROBE_MAX_S


def test_a_restarted_registry_tells_its_nodes_so_a_long_outage_ends_within_a_second(
    net: Network,
) -> None:
    alpha, beta = net.node("alpha"), net.node("beta")
    net.up(alpha, beta)
    _away(net, alpha)
    net.run(LONG_OUTAGE_S)
    assert not beta.core.registry_online
    net.restart_registry()
    net.registry_down = False
    back_at = net.now
    net.run_until(lambda: alpha.core.registry_online and beta.core.registry_online, 30.0)
    assert net.now - back_at <= RETURN_S
    assert net.registry.counters["recalled"] == 2
    net.run(3.0)
    assert net.registry.counters["recalled_back"] == 2
    assert not net.registry.recalling


def test_a_registry_back_without_a_restart_is_found_by_the_probes(net: Network) -> None:
    """The registry did not restart (a network outage between them ended): it tells
    nobody, and the node's next probe finds it, at most LONGEST_PAUSE_S later."""
    alpha = net.node("alpha")
    net.up(alpha)
    _away(net, alpha)
    net.run(LONG_OUTAGE_S)
    net.registry_down = False
    back_at = net.now
    net.run_until(lambda: alpha.core.registry_online, LONGEST_PAUSE_S * 2)
    assert net.now - back_at <= LONGEST_PAUSE_S + 0.1
    assert net.registry.counters["recalled"] == 0


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
    net.run(REGISTER_INTERVAL_S * 2 * (1 + HEARTBEAT_JITTER) + 1)
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
    assert sent and net.now - sent[-1][0] <= LONGEST_PAUSE_S


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
