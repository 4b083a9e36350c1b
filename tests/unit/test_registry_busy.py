"""Load shedding: past its budget of new channels a proven request
from a key without a channel is answered with a 24-byte busy notice (retry after N ms,
the request's mac1 echoed); nodes with a channel are still served; the notice's wire
format refuses garbage; a node waits the pause with jitter, spends no attempt on it, and
ignores a forged, broken or stray notice."""

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_registry_link import ALICE, BOB, Pair, register

from pilotif.control import gate
from pilotif.control.wire import (
    BUSY_SIZE,
    BUSY_TYPE,
    KEY_REQUEST,
    WireError,
    pack_busy,
    parse_busy,
    request_mac1,
)
from pilotif.node.registry_link import REQUEST_ATTEMPTS, GaveUp, RegistryLink, Reply
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.events import Endpoint

CAROL: Endpoint = ("198.18.1.4", 40003)
DAVE: Endpoint = ("198.18.1.5", 40004)


@pytest.fixture
def saturated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """A registry whose budget is one new channel, refilled once an hour."""
    monkeypatch.setattr(gate, "NEW_CHANNELS_BURST", 1.0)
    monkeypatch.setattr(gate, "NEW_CHANNELS_PER_S", 1 / 3600)
    built = Pair(tmp_path)
    yield built
    built.store.close()


def test_past_the_budget_a_new_key_is_answered_busy_and_known_nodes_are_served(
    saturated: Pair,
) -> None:
    pair = saturated
    alice = pair.link(generate_private_key())
    register(pair, alice, ALICE, "alice")
    bob = pair.link(generate_private_key())
    bob.request("register", {"hostname": "bob", "tags": [], "lan": []}, pair.now)
    sent = []
    while bob.outgoing:
        batch, bob.outgoing = bob.outgoing, []
        for datagram, _ in batch:
            sent.append(datagram)
            for answer, destination in pair.core.handle_datagram(datagram, BOB, pair.now):
                pair.heard.setdefault(destination, []).append(answer)
                bob.receive(answer, pair.now)
    # A cookie reply first (an unproven address gets no busy), then the busy notice.
    busy = pair.heard[BOB][-1]
    assert len(pair.heard[BOB]) == 2 and len(pair.heard[BOB][0]) == 64
    assert busy[0] == BUSY_TYPE and len(busy) == BUSY_SIZE < len(sent[-1])
    assert parse_busy(busy) == (gate.BUSY_RETRY_MS, request_mac1(sent[-1]))
    assert pair.core.counters["busy"] == 1
    assert pair.store.node_by_hostname("bob") is None
    # Alice's channel is open: her heartbeat costs no budget.
    assert pair.call(alice, ALICE, "register", hostname="alice", tags=[], lan=[])["ok"]
    assert pair.core.counters["busy"] == 1


def test_within_the_budget_nobody_is_answered_busy(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    for number, source in enumerate((ALICE, BOB)):
        register(pair, pair.link(generate_private_key()), source, f"node-{number}")
    assert pair.core.counters["busy"] == 0
    pair.store.close()


def test_a_busy_notice_reads_back() -> None:
    request = bytes(range(200))
    assert parse_busy(pack_busy(request, 1500)) == (1500, request[-32:-16])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes((BUSY_TYPE,)),
        pack_busy(bytes(64), 1)[:-1],
        pack_busy(bytes(64), 1) + b"\0",
        bytes((0x54,)) + pack_busy(bytes(64), 1)[1:],
        pack_busy(bytes(64), 1)[:1] + b"\1" + pack_busy(bytes(64), 1)[2:],
    ],
)
def test_what_is_not_a_busy_notice_is_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        parse_busy(data)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_wire_error_or_read_as_a_notice(data: bytes) -> None:
    try:
        retry_after_ms, mac1 = parse_busy(data)
    except WireError:
        return
    assert pack_busy(bytes(16) + mac1 + bytes(16), retry_after_ms) == data


# -- the node's side -------------------------------------------------------------------

REGISTRY_AT = ("198.18.0.1", 9000)


def waiting_link() -> tuple[RegistryLink, bytes]:
    """A link with one registration in flight, and that datagram."""
    link = RegistryLink(
        generate_private_key(), REGISTRY_AT, public_key(generate_private_key()), first_counter=1
    )
    link.request("register", {"hostname": "n", "tags": [], "lan": []}, NOW)
    ((datagram, _),) = link.outgoing
    link.outgoing.clear()
    return link, datagram


NOW = 1_700_000_000.0


def test_a_busy_notice_delays_the_retry_with_jitter_without_spending_an_attempt() -> None:
    retries = []
    for _ in range(50):
        link, datagram = waiting_link()
        assert link.receive(pack_busy(datagram, 2000), NOW, REGISTRY_AT) == []
        assert link.busy == 1 and link.dropped == 0
        due = link.next_timer()
        assert due is not None and NOW + 1.0 <= due <= NOW + 3.0
        retries.append(due)
        # The attempt was not spent: REQUEST_ATTEMPTS more before it is given up.
        given_up = []
        for attempt in range(REQUEST_ATTEMPTS):
            given_up += [e for e in link.handle_timer(due + attempt) if isinstance(e, GaveUp)]
        assert not given_up
    # Turned away together, they do not come back together.
    assert max(retries) - min(retries) > 1.0


@pytest.mark.parametrize(
    "forge",
    [
        lambda datagram: pack_busy(bytes(len(datagram)), 2000),  # another request's mac1
        lambda datagram: pack_busy(datagram, 2000)[:-1],  # truncated
        lambda datagram: pack_busy(datagram, 2000) + b"\0",  # too long
        lambda datagram: bytes((BUSY_TYPE,)) + bytes(3),  # garbage
    ],
)
def test_a_forged_or_broken_busy_notice_changes_nothing(forge: Callable[[bytes], bytes]) -> None:
    link, datagram = waiting_link()
    before = link.next_timer()
    assert link.receive(forge(datagram), NOW, REGISTRY_AT) == []
    assert link.next_timer() == before and link.busy == 0 and link.dropped == 1


def test_a_busy_notice_from_another_address_is_ignored() -> None:
    link, datagram = waiting_link()
    before = link.next_timer()
    link.receive(pack_busy(datagram, 60_000), NOW, ("198.18.9.9", 9000))
    assert link.next_timer() == before and link.busy == 0


def test_a_node_turned_away_registers_once_the_registry_has_room(saturated: Pair) -> None:
    pair = saturated
    register(pair, pair.link(generate_private_key()), ALICE, "alice")
    bob = pair.link(generate_private_key())
    request_id = bob.request("register", {"hostname": "bob", "tags": [], "lan": []}, pair.now)
    assert pair.exchange(bob, BOB) == [] and bob.busy == 1
    pair.now += 3600  # the budget refills
    answers = [e for e in bob.handle_timer(pair.now)]
    answers += pair.exchange(bob, BOB)
    replies = [a for a in answers if isinstance(a, Reply)]
    assert [r.request_id for r in replies] == [request_id] and replies[0].message["ok"]


# -- falling behind ----------------------------------------------------------------------


def _registers(pair: Pair, source: Endpoint, name: str) -> bool:
    """Whether a new node is served now (else it was answered busy)."""
    link = pair.link(generate_private_key())
    link.request("register", {"hostname": name, "tags": [], "lan": []}, pair.now)
    return any(isinstance(e, Reply) for e in pair.exchange(link, source))


def test_a_registry_whose_queue_stands_answers_new_keys_busy_until_it_drains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While behind, one new channel and one key answer an hour still go through.
    monkeypatch.setattr(gate, "BEHIND_BURST", 1.0)
    monkeypatch.setattr(gate, "BEHIND_NEW_CHANNELS_PER_S", 1 / 3600)
    monkeypatch.setattr(gate, "BEHIND_KEY_ANSWERS_PER_S", 1 / 3600)
    pair = Pair(tmp_path)
    alice = pair.link(generate_private_key())
    register(pair, alice, ALICE, "alice")
    # A burst: one datagram of the interval waited little. Not behind.
    for wait in (gate.QUEUE_TARGET_S * 3, gate.QUEUE_TARGET_S / 2, gate.QUEUE_TARGET_S * 3):
        pair.core.waited(wait, pair.now)
    pair.now += gate.QUEUE_INTERVAL_S
    pair.core.waited(gate.QUEUE_TARGET_S * 3, pair.now)
    assert _registers(pair, BOB, "bob")
    # A standing queue: every datagram of an interval waited more than the target.
    pair.now += gate.QUEUE_INTERVAL_S
    pair.core.waited(gate.QUEUE_TARGET_S * 3, pair.now)
    # The few that still go through while behind (nobody waits for ever), then busy.
    assert _registers(pair, DAVE, "dave")
    assert not _registers(pair, CAROL, "carol")
    assert pair.core.counters["busy_behind"] == pair.core.counters["busy"] == 1
    # Key requests (the probes of nodes away): the few, then unanswered; a node with a
    # channel is served all the same.
    assert pair.core.handle_datagram(KEY_REQUEST, CAROL, pair.now) != []
    assert pair.core.handle_datagram(KEY_REQUEST, CAROL, pair.now) == []
    assert pair.core.counters["key_request_behind"] == 1
    assert pair.call(alice, ALICE, "register", hostname="alice", tags=[], lan=[])["ok"]
    # Drained: the next interval's datagrams waited little.
    pair.now += gate.QUEUE_INTERVAL_S
    pair.core.waited(0.0, pair.now)
    pair.now += gate.QUEUE_INTERVAL_S
    pair.core.waited(0.0, pair.now)
    assert _registers(pair, CAROL, "carol")
    assert pair.core.handle_datagram(KEY_REQUEST, CAROL, pair.now) != []
    assert pair.core.counters["busy"] == 1


def test_a_backlog_that_drains_does_not_stand_and_its_delay_is_gone() -> None:
    """The shell says when its backlog emptied: a queue that drains within an interval
    is a burst, not a standing queue, and the recall (registry/recall.py) sees no
    delay the moment the backlog is empty, not a wait that is over."""
    checker = gate.ControlGate(generate_private_key(), Counter())
    now = 1_000.0
    checker.waited(gate.QUEUE_TARGET_S * 3, now)
    assert checker.queue_delay(now) == gate.QUEUE_TARGET_S * 3
    checker.drained(now + 0.01)
    assert checker.queue_delay(now + 0.01) == 0.0
    checker.waited(gate.QUEUE_TARGET_S * 3, now + gate.QUEUE_INTERVAL_S + 0.02)
    assert not checker.behind(now + gate.QUEUE_INTERVAL_S + 0.03)
    # Without the drain the same waits stand: behind.
    standing = gate.ControlGate(generate_private_key(), Counter())
    standing.waited(gate.QUEUE_TARGET_S * 3, now)
    standing.waited(gate.QUEUE_TARGET_S * 3, now + gate.QUEUE_INTERVAL_S + 0.02)
    assert standing.behind(now + gate.QUEUE_INTERVAL_S + 0.03)
    # A wait long over is no delay.
    assert standing.queue_delay(now + 1.0) == 0.0


def test_without_a_shell_that_tells_the_waits_nobody_is_behind(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.now += 3600
    assert _registers(pair, BOB, "bob")
    assert pair.core.counters["busy"] == 0


def test_heartbeats_on_a_kept_channel_and_key_requests_are_urgent_new_keys_and_junk_not(
    tmp_path: Path,
) -> None:
    pair = Pair(tmp_path)
    alice = pair.link(generate_private_key())
    register(pair, alice, ALICE, "alice")
    alice.request("register", {"hostname": "alice", "tags": [], "lan": []}, pair.now)
    [(heartbeat, _)] = alice.outgoing
    bob = pair.link(generate_private_key())
    bob.request("register", {"hostname": "bob", "tags": [], "lan": []}, pair.now)
    [(first, _)] = bob.outgoing
    assert pair.core.urgent(heartbeat)
    assert not pair.core.urgent(first)
    assert pair.core.urgent(KEY_REQUEST)
    assert not pair.core.urgent(KEY_REQUEST + b"\0")
    assert not pair.core.urgent(heartbeat[:20])
    assert not pair.core.urgent(b"")
