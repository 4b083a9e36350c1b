"""The node's registry link against a real registry core, in memory: cookies, sessions and
counters that survive restarts on both sides without the wall clock. No sockets."""

import heapq
import logging
import random
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from pilotif.control.counter_lease import LEASE, CounterLease
from pilotif.control.wire import COUNTER_LEASE, REPLICA_KEEPALIVE, ControlChannel
from pilotif.node.registration import heartbeat_pause_s
from pilotif.node.registry_link import (
    REGISTER_INTERVAL_S,
    REQUEST_ATTEMPTS,
    GaveUp,
    LinkInput,
    MoveAsked,
    Push,
    RegistryLink,
    Reply,
    SwitchedRegistry,
)
from pilotif.registry.core import RegistryCore
from pilotif.registry.store import Store
from pilotif.util.files import StateFileError
from pilotif.wg.constants import COOKIE_REFRESH_TIME_S
from pilotif.wg.cookie import RENEWAL_SPREAD_S
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import encode_key

REGISTRY: Endpoint = ("198.18.0.1", 9000)
START_S = 1_700_000_000.0


class Pair:
    """One registry core and the links of nodes at fixed addresses; `exchange` carries
    datagrams both ways until nothing is left in flight."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.registry_private = generate_private_key()
        self.store = Store(tmp / "registry.db", IPv4Network("100.64.0.0/10"))
        self.core = RegistryCore(self.registry_private, self.store, first_counter=1)
        self.now = START_S
        self.heard: dict[Endpoint, list[bytes]] = {}
        """Every datagram the registry sent, by destination (what an observer records)."""

    def link(self, private: bytes, first_counter: int = 1) -> RegistryLink:
        return RegistryLink(private, REGISTRY, self.core.public_key, first_counter=first_counter)

    def exchange(self, link: RegistryLink, source: Endpoint) -> list[LinkInput]:
        inputs: list[LinkInput] = []
        while link.outgoing:
            sent, link.outgoing = link.outgoing, []
            for datagram, _ in sent:
                for answer, destination in self.core.handle_datagram(datagram, source, self.now):
                    self.heard.setdefault(destination, []).append(answer)
                    if destination == source:
                        inputs += link.receive(answer, self.now)
        return inputs

    def call(self, link: RegistryLink, source: Endpoint, op: str, **fields: Any) -> dict[str, Any]:
        request_id = link.request(op, fields, self.now)
        replies = [i for i in self.exchange(link, source) if isinstance(i, Reply)]
        assert [r.request_id for r in replies] == [request_id]
        return replies[0].message


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    built = Pair(tmp_path)
    yield built
    built.store.close()


ALICE: Endpoint = ("198.18.1.2", 40001)
BOB: Endpoint = ("198.18.1.3", 40002)


def register(pair: Pair, link: RegistryLink, source: Endpoint, name: str) -> None:
    reply = pair.call(link, source, "register", hostname=name, tags=[], lan=[])
    assert reply["ok"], reply


def test_a_cookie_reply_sends_the_request_again_at_once_without_spending_an_attempt(
    pair: Pair,
) -> None:
    link = pair.link(generate_private_key())
    link.request("register", {"hostname": "alice", "tags": [], "lan": []}, pair.now)
    [first] = link.outgoing
    inputs = pair.exchange(link, ALICE)
    assert pair.core.counters["cookie_replies"] == 1
    assert [type(i) for i in inputs] == [Reply]
    # The first datagram, without a cookie, was answered with 64 bytes only.
    assert len(pair.heard[ALICE][0]) == 64 < len(first[0])
    # Every later request carries a valid mac2 until the cookie ages (a node silent
    # for longer than the registry renews cookies).
    register(pair, link, ALICE, "alice")
    assert pair.core.counters["cookie_replies"] == 1
    pair.now += 2 * COOKIE_REFRESH_TIME_S + 10
    register(pair, link, ALICE, "alice")
    assert pair.core.counters["cookie_replies"] == 2
    assert link.handle_timer(pair.now + 1) == []
    assert link.next_timer() is None


def test_a_cookie_is_renewed_with_an_answer_before_it_lapses(pair: Pair) -> None:
    """Every node's cookie dates from the registry's secret of the time: when the
    registry replaced it every node's next heartbeat (100,000 within 20 s, every two
    minutes) paid a cookie round trip. Now a message with a cookie of the secret before
    is served in one round trip, and its answer brings a fresh cookie."""
    link = pair.link(generate_private_key())
    register(pair, link, ALICE, "alice")
    for _ in range(20):
        pair.now += REGISTER_INTERVAL_S
        link.request("register", {"hostname": "alice", "tags": [], "lan": []}, pair.now)
        pair.heard.clear()
        inputs = pair.exchange(link, ALICE)
        assert [type(i) for i in inputs] == [Reply]
        # One request, one answer (and a 64-byte renewal when its cookie was due).
        assert [len(d) for d in pair.heard[ALICE]][1:] in ([], [64])
    assert pair.core.counters["cookie_replies"] == 1
    assert pair.core.counters["cookie_renewals"] >= 2
    assert link.next_timer() is None


def test_a_fleets_cookies_are_renewed_at_a_steady_rate_and_none_lapses(pair: Pair) -> None:
    """Before: when the registry replaced its cookie secret (every two minutes) every
    node's next heartbeat brought a renewal, 100,000 within 20 s, which stood a queue at
    the registry. Now each node is renewed at its own time within RENEWAL_SPREAD_S of
    the replacement, and still before its cookie lapses: no heartbeat of a node that
    registered pays a cookie round trip."""
    rng = random.Random(26)
    fleet = [
        (pair.link(generate_private_key()), (f"198.18.{number}.2", 40000 + number))
        for number in range(1, 121)
    ]
    for number, (link, source) in enumerate(fleet):
        register(pair, link, source, f"node-{number}")
    assert pair.core.counters["cookie_replies"] == len(fleet)
    due = [(pair.now + heartbeat_pause_s(rng, REGISTER_INTERVAL_S), n) for n in range(len(fleet))]
    heapq.heapify(due)
    renewals: list[float] = []
    # Three replacements of the secret (at the epochs' starts), and the last one's
    # renewals (each within a heartbeat of its time), before a fourth.
    first = (pair.now // COOKIE_REFRESH_TIME_S + 1) * COOKIE_REFRESH_TIME_S
    end = first + 2 * COOKIE_REFRESH_TIME_S + RENEWAL_SPREAD_S + 1.5 * REGISTER_INTERVAL_S
    while due[0][0] < end:
        pair.now, number = heapq.heappop(due)
        link, source = fleet[number]
        before = pair.core.counters["cookie_renewals"]
        register(pair, link, source, f"node-{number}")
        renewals += [pair.now] * (pair.core.counters["cookie_renewals"] - before)
        heapq.heappush(due, (pair.now + heartbeat_pause_s(rng, REGISTER_INTERVAL_S), number))
    assert pair.core.counters["cookie_replies"] == len(fleet)
    assert len(renewals) == 3 * len(fleet)
    busiest = max(sum(at <= t < at + REGISTER_INTERVAL_S for t in renewals) for at in renewals)
    # Spread over 80 s: about a quarter of the fleet in any 20 s (all of it before).
    assert busiest <= len(fleet) // 2


def test_a_heartbeat_is_checked_unless_it_repeats_what_the_registry_holds(pair: Pair) -> None:
    """A heartbeat that repeats its node's stored name, tags and LAN endpoints skips their
    checks; one that differs is checked and normalized as a first registration is."""
    private = generate_private_key()
    link = pair.link(private)
    fields = {"hostname": "alice", "tags": ["web"], "lan": ["198.18.1.2:51820"]}
    for _ in range(2):
        assert pair.call(link, ALICE, "register", **fields)["hostname"] == "alice"
    reply = pair.call(link, ALICE, "register", hostname="Alice", tags=["WEB", "web"], lan=[])
    assert reply["ok"] and reply["hostname"] == "alice", reply
    record = pair.store.node_by_key(public_key(private))
    assert record is not None
    assert (record.hostname, record.tags, record.lan_endpoints) == ("alice", ("web",), ())
    refused = pair.call(link, ALICE, "register", hostname="alice", tags=["no good"], lan=[])
    assert refused["code"] == "invalid_tag", refused


def test_a_node_counting_from_below_the_registrys_floor_joins_after_one_notice(
    pair: Pair,
) -> None:
    """Before: counters were the clock in ns, so a node whose clock once ran ahead was
    refused as a replay until real time caught up, seeing only "registry unreachable".
    Now the registry says the floor and the node goes above it at once."""
    private = generate_private_key()
    ahead = pair.link(private, first_counter=2**62)
    register(pair, ahead, ALICE, "alice")
    behind = pair.link(private, first_counter=5)
    register(pair, behind, ALICE, "alice")
    assert pair.core.counters["stale_counter"] == 1
    assert behind.counter > 2**62


def test_pushes_recorded_in_an_earlier_session_are_refused_after_a_restart(pair: Pair) -> None:
    """Before: after a restart the node accepted a push recorded in its earlier session
    (a trust_changed that brings back a revoked peer). Now every message the registry
    seals for a node names the session the node chose at its start."""
    alice_key, bob_key = generate_private_key(), generate_private_key()
    alice, bob = pair.link(alice_key), pair.link(bob_key)
    register(pair, alice, ALICE, "alice")
    register(pair, bob, BOB, "bob")
    bob_b64 = _b64(bob_key)
    pair.call(alice, ALICE, "trust_request", peer=bob_b64, message="")
    pair.call(bob, BOB, "trust_respond", peer=_b64(alice_key), approve=True)
    recorded = pair.heard[ALICE][-1]
    [taken] = alice.receive(recorded, pair.now)
    assert isinstance(taken, Push) and taken.message["trusted"] is True

    restarted = pair.link(alice_key, first_counter=alice.counter + 1)
    assert restarted.session != alice.session
    register(pair, restarted, ALICE, "alice")
    before = restarted.dropped
    assert restarted.receive(recorded, pair.now) == []
    assert restarted.dropped == before + 1
    # What the registry pushes now, it seals for the new session.
    pair.call(bob, BOB, "untrust", peer=_b64(alice_key))
    [revoked] = restarted.receive(pair.heard[ALICE][-1], pair.now)
    assert isinstance(revoked, Push) and revoked.message["trusted"] is False


def test_a_request_that_gets_no_answer_gives_up_after_its_attempts(pair: Pair) -> None:
    link = pair.link(generate_private_key())
    request_id = link.request("lookup", {"query": "x"}, pair.now)
    gave_up: list[LinkInput] = []
    for second in range(1, 2 * REQUEST_ATTEMPTS):
        gave_up += link.handle_timer(pair.now + second)
    assert gave_up == [GaveUp(request_id)]


REPLICA: Endpoint = ("198.18.0.2", 9000)


def _through(core: RegistryCore, link: RegistryLink, source: Endpoint, now: float) -> list[Any]:
    """Carry the link's datagrams to `core` (a replica at REPLICA) and its answers back."""
    inputs: list[Any] = []
    while link.outgoing:
        sent, link.outgoing = link.outgoing, []
        for datagram, destination in sent:
            assert destination == REPLICA
            for answer, to in core.handle_datagram(datagram, source, now):
                if to == source:
                    inputs += link.receive(answer, now, REPLICA)
    return inputs


def test_a_silent_registry_hands_every_waiting_request_to_its_replica(
    pair: Pair, tmp_path: Path
) -> None:
    replica = RegistryCore(
        pair.registry_private,
        Store(tmp_path / "registry.db", IPv4Network("100.64.0.0/10")),
        first_counter=10**6,
        replica="b",
    )
    private = generate_private_key()
    link = RegistryLink(
        private, REGISTRY, pair.core.public_key, first_counter=1, replicas=(REPLICA,)
    )
    register(pair, link, ALICE, "alice")
    pair.store.flush()
    recorded = pair.heard[ALICE][-1]
    request_id = link.request("lookup", {"query": "alice"}, pair.now)
    link.outgoing.clear()  # the registry at REGISTRY is gone
    assert link.handle_timer(pair.now + 1) == []
    link.outgoing.clear()
    assert link.handle_timer(pair.now + 2) == [SwitchedRegistry(REPLICA, REGISTRY)]
    assert link.endpoint == REPLICA
    inputs = _through(replica, link, ALICE, pair.now + 2)
    assert [type(i) for i in inputs] == [Reply]
    assert inputs[0].request_id == request_id and inputs[0].message["ok"]
    # The first registry's messages still meet its own replay window.
    before = link.dropped
    assert link.receive(recorded, pair.now, REGISTRY) == []
    assert link.dropped == before + 1
    replica.store.close()


def test_a_lone_registry_is_never_switched_away_from(pair: Pair) -> None:
    link = pair.link(generate_private_key())
    link.request("lookup", {"query": "x"}, pair.now)
    inputs = [i for s in range(1, 10) for i in link.handle_timer(pair.now + s)]
    assert not any(isinstance(i, SwitchedRegistry) for i in inputs)
    assert {d for _, d in link.outgoing} == {REGISTRY}


def test_another_replica_asks_the_node_to_move_and_only_it_may(pair: Pair) -> None:
    private = generate_private_key()
    link = RegistryLink(
        private, REGISTRY, pair.core.public_key, first_counter=1, replicas=(REPLICA,)
    )
    sealer = ControlChannel(pair.registry_private, public_key(private), local_is_registry=True)
    notice = {"op": "use_replica", "gone": "reg-b:7946:9", "session": link.session}
    assert link.receive(sealer.seal(notice, 1), pair.now, REPLICA) == [
        MoveAsked(REPLICA, "reg-b:7946:9")
    ]
    # From the replica we talk to it means nothing; from an earlier session, nothing.
    assert link.receive(sealer.seal(notice, 2), pair.now, REGISTRY) == []
    stale = {**notice, "session": link.session + 1}
    assert link.receive(sealer.seal(stale, 3), pair.now, REPLICA) == []
    link.request("lookup", {"query": "x"}, pair.now)
    link.outgoing.clear()
    before = link.counter
    assert link.switch_to(REPLICA, pair.now) == SwitchedRegistry(REPLICA, REGISTRY)
    assert [to for _, to in link.outgoing] == [REPLICA]
    # Above any floor the silent replica stored for us (a lease COUNTER_LEASE ahead).
    assert link.counter > before + COUNTER_LEASE


def test_a_node_keeps_its_nat_open_to_the_replicas_it_does_not_talk_to(pair: Pair) -> None:
    private = generate_private_key()
    link = RegistryLink(
        private, REGISTRY, pair.core.public_key, first_counter=1, replicas=(REPLICA,)
    )
    link.keep_others_open()
    assert link.outgoing == [(REPLICA_KEEPALIVE, REPLICA)]
    # The registry counts it and answers nothing: it amplifies nothing.
    assert pair.core.handle_datagram(REPLICA_KEEPALIVE, ALICE, pair.now) == []
    assert pair.core.counters["replica_keepalives"] == 1
    lone = pair.link(private)
    lone.keep_others_open()
    assert lone.outgoing == []


def _b64(private: bytes) -> str:
    return encode_key(public_key(private))


# -- the counter file --------------------------------------------------------------


def test_the_counter_lease_starts_above_everything_handed_out_before(tmp_path: Path) -> None:
    path = tmp_path / "control.counter"
    first = CounterLease(path)
    assert int(path.read_text()) == first.first + LEASE
    first.cover(first.first + LEASE - 1)
    assert int(path.read_text()) == first.first + 2 * LEASE - 1
    second = CounterLease(path)
    assert second.first > first.first + LEASE - 1


def test_the_counter_lease_ignores_the_clock_once_it_has_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "control.counter"
    path.write_text("1000\n")
    monkeypatch.setattr("time.time_ns", lambda: 10**18)
    assert CounterLease(path).first == 1000


@pytest.mark.parametrize("text", ["", "abc\n", "-5\n", f"{2**64}\n", "12 34\n"])
def test_a_corrupted_counter_file_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "control.counter"
    path.write_text(text)
    with pytest.raises(StateFileError, match=str(path)):
        CounterLease(path)


def test_a_counter_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("5\n")
    (tmp_path / "control.counter").symlink_to(target)
    with pytest.raises(StateFileError, match="symbolic link"):
        CounterLease(tmp_path / "control.counter")
    assert target.read_text() == "5\n"


def test_a_new_node_is_one_log_line_and_a_returning_one_another(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """100,000 nodes registering write 100,000 lines, not twice as many; a node seen
    again after it went offline is logged online."""
    link = pair.link(generate_private_key())
    with caplog.at_level(logging.INFO, logger="pilotif"):
        register(pair, link, ALICE, "alice")
        register(pair, link, ALICE, "alice")
        pair.now += 3600
        register(pair, link, ALICE, "alice")
    events = [(r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert [name for name, _ in events] == ["node_registered", "node_online"]
    assert events[0][1]["endpoint"] == events[1][1]["endpoint"] == f"{ALICE[0]}:{ALICE[1]}"


def test_a_trust_request_to_a_node_just_registered_comes_with_its_next_heartbeat(
    pair: Pair,
) -> None:
    """Bob's heartbeat waits to be written (every 100 ms) when alice asks him for trust;
    the push at once is lost: bob's next heartbeat brings it (found by review: the
    registry's memory of bob kept "nothing waits")."""
    alice_key, bob_key = generate_private_key(), generate_private_key()
    alice, bob = pair.link(alice_key), pair.link(bob_key)
    register(pair, alice, ALICE, "alice")
    register(pair, bob, BOB, "bob")
    pair.call(alice, ALICE, "trust_request", peer=_b64(bob_key), message="hi")
    pair.heard.clear()
    pair.now += 25
    bob.request("register", {"hostname": "bob", "tags": [], "lan": []}, pair.now)
    inputs = pair.exchange(bob, BOB)
    assert [i.message["op"] for i in inputs if isinstance(i, Push)] == ["trust_requested"]
