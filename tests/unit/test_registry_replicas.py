"""Two registry replicas on one PostgreSQL database (issue 13): nodes on different
replicas find, trust and punch to each other, pushes cross through the database
(LISTEN/NOTIFY), a replica that stops saying it is alive takes its nodes offline with
it, and a node that moves keeps its address, name and trust."""

import itertools
import json
import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pilotif_lab.postgres import ThrowawayPostgres

from pilotif.control.wire import COUNTER_LEASE, ControlChannel, pack_relay
from pilotif.registry.database import DatabaseError
from pilotif.registry.replicas import (
    DETACH_EVERY,
    NOTE_LIFETIME_S,
    ORPHAN_WAIT_S,
    ORPHANS_IN_FLIGHT,
    PUSH_CHANNEL,
    REPLICA_ALIVE_S,
)
from pilotif.registry.store import Store
from pilotif.wg.crypto import generate_private_key, public_key
from tests.unit.test_registry_server import (
    NETWORK,
    START,
    WIREGUARD_DATAGRAM,
    FakeNode,
    World,
    remac,
)

INTRUDER = "intruder"
"""A role that may connect to the registry's database and was granted nothing (any role
may connect by default: PUBLIC has CONNECT on every new database)."""
NOTIFY_WAIT_S = 5.0
QUIET_S = 0.3
"""No notification for this long: the others said all they had to say."""


@pytest.fixture
def replicas(
    postgres_server: ThrowawayPostgres, request: pytest.FixtureRequest
) -> Iterator[tuple[World, World]]:
    url = postgres_server.create_database(f"replicas_{request.node.name[-40:].lower()}")
    key = generate_private_key()
    a, b = World(url, key, replica="a"), World(url, key, replica="b")
    b._hosts = itertools.count(100)
    for world in (a, b):
        world.store.listen(PUSH_CHANNEL)
    alive(a, b)
    yield a, b
    for world in (a, b):
        world.store.close()


def intruder_connection(server: ThrowawayPostgres, url: str) -> "psycopg.Connection[Any]":
    """A connection as INTRUDER to the database at `url` (the role made if need be)."""
    server.psql(
        f"DO $$ BEGIN CREATE ROLE {INTRUDER} LOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    return psycopg.connect(url.replace("postgres@", f"{INTRUDER}@", 1), autocommit=True)


def forged_revocation(replica: str, node_key: str, peer: dict[str, Any]) -> str:
    """What a replica once sent another on PUSH_CHANNEL: "tell your node `node_key`
    that `peer` no longer trusts it"."""
    payload = {"op": "trust_changed", "node": peer, "trusted": False}
    return json.dumps({"replica": replica, "key": node_key, "payload": payload})


def alive(*worlds: World) -> None:
    for world in worlds:
        world.core.keep_replicas(world.now)
    for world in worlds:
        world.core.keep_replicas(world.now)


def pump(world: World, *, expect_pushes: bool = True) -> int:
    """Deliver what other replicas sent this one through the database: until a push
    came (or, without `expect_pushes`, until nothing more comes); how many pushes."""
    listener = world.store._db._listener  # type: ignore[attr-defined]
    sent = 0
    deadline = time.monotonic() + NOTIFY_WAIT_S
    while time.monotonic() < deadline:
        wait = NOTIFY_WAIT_S if expect_pushes else QUIET_S
        ready, _, _ = select.select([listener.fileno()], [], [], wait)
        for datagram, destination in world.core.handle_notifications(world.now):
            world.inbox.setdefault(destination, []).append(datagram)
            sent += 1
        if (expect_pushes and sent) or (not expect_pushes and not ready):
            return sent
    assert not expect_pushes, "no push reached the replica"
    return sent


@pytest.fixture
def pair(replicas: tuple[World, World]) -> tuple[FakeNode, FakeNode]:
    a, b = replicas
    alice, bob = a.new_node(), b.new_node()
    a.register(alice, "alice", lan=["10.0.0.5:51820"])
    b.register(bob, "bob", lan=["10.1.0.7:51820"])
    for world in (a, b):
        world.store.flush()
    return alice, bob


def _speak_at(world: World, node: FakeNode) -> None:
    """Let `node` talk to this replica too, as a node's RegistryLink does: a replay
    window of its own for this replica, and a counter above the floor it keeps."""
    world.nodes[node.endpoint] = node
    node.channel = ControlChannel(node.private, world.core.public_key, local_is_registry=False)
    stale = world.call(node, "lookup", query="x")
    assert stale["code"] == "stale_counter", "a replica knows the floor, not the counter"
    node.counter = itertools.count(stale["floor"] + 1)


def _trust_across(replicas: tuple[World, World], alice: FakeNode, bob: FakeNode) -> None:
    """Alice (at the first replica) and bob (at the second) trust each other; what they
    were told of it is taken."""
    a, b = replicas
    a.call(alice, "trust_request", peer=bob.b64, message="")
    pump(b)
    b.call(bob, "trust_respond", peer=alice.b64, approve=True)
    pump(a)
    a.messages(alice)
    b.messages(bob)


def test_the_register_reply_names_the_replica(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    a, _ = replicas
    assert a.register(pair[0], "alice")["replica"] == "a"


def test_trust_crosses_replicas_through_the_database(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    a, b = replicas
    alice, bob = pair
    [found] = a.call(alice, "lookup", query="bob")["nodes"]
    assert found["online"], "bob is online at the other replica"
    assert a.call(alice, "trust_request", peer=bob.b64, message="hi")["state"] == "pending"
    assert pump(b) == 1
    [asked] = b.pushes(bob)
    assert (asked["op"], asked["node"]["hostname"], asked["message"]) == (
        "trust_requested",
        "alice",
        "hi",
    )
    assert b.call(bob, "trust_respond", peer=alice.b64, approve=True)["state"] == "trusted"
    assert pump(a) == 1
    [changed] = a.pushes(alice)
    assert (changed["op"], changed["node"]["hostname"], changed["trusted"]) == (
        "trust_changed",
        "bob",
        True,
    )
    assert a.core.counters["pushes_forwarded"] == 1 and b.core.counters["pushes_received"] == 1


def test_a_punch_reaches_both_sides_across_replicas(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    a, b = replicas
    alice, bob = pair
    _trust_across(replicas, alice, bob)
    assert a.call(alice, "connect", peer=bob.b64)["ok"]
    [to_alice] = a.pushes(alice)
    assert to_alice["op"] == "punch"
    assert to_alice["candidates"] == [f"{bob.endpoint[0]}:{bob.endpoint[1]}", "10.1.0.7:51820"]
    pump(b)
    [to_bob] = b.pushes(bob)
    assert to_bob["op"] == "punch" and to_bob["node"]["hostname"] == "alice"
    assert to_bob["candidates"][0] == f"{alice.endpoint[0]}:{alice.endpoint[1]}"


def test_the_nodes_of_a_silent_replica_are_offline(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    a, _ = replicas
    alice, bob = pair
    a.now += 3 * REPLICA_ALIVE_S + 1
    alive(a)  # b says nothing
    [found] = a.call(alice, "lookup", query="bob")["nodes"]
    assert not found["online"]
    a.call(alice, "trust_request", peer=bob.b64, message="")
    assert a.core.counters["pushes_forwarded"] == 0


def test_the_nodes_of_a_dead_replica_are_told_to_come_as_fast_as_they_come(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    a, b = replicas
    _, bob = pair
    more = [b.new_node() for _ in range(ORPHANS_IN_FLIGHT + 1)]
    for index, node in enumerate(more):
        b.register(node, f"node-{index}")
    b.store.flush()
    a.now += 3 * REPLICA_ALIVE_S + 1
    alive(a)  # b says nothing: it died
    first = a.core.tell_orphans(a.now)
    assert len(first) == ORPHANS_IN_FLIGHT
    assert a.core.tell_orphans(a.now) == [], "no more until some of them came"
    came = next(n for n in more if any(to == n.endpoint for _, to in first))
    a.nodes[came.endpoint] = came
    came.channel = ControlChannel(came.private, a.core.public_key, local_is_registry=False)
    came.counter = itertools.count(next(came.counter) + COUNTER_LEASE)
    a.register(came, "node-came")
    second = a.core.tell_orphans(a.now)
    assert len(second) == 1
    assert a.core.tell_orphans(a.now) == []
    a.now += ORPHAN_WAIT_S + 1  # the others never came: they no longer hold the last up
    third = a.core.tell_orphans(a.now)
    assert len(third) == 1
    told = first + second + third
    assert {endpoint for _, endpoint in told} == {bob.endpoint, *(n.endpoint for n in more)}
    # Sealed by a (the same registry key, its own counters): bob opens it with the
    # window it keeps for a, and it names the replica that died and bob's session.
    [notice] = [data for data, endpoint in told if endpoint == bob.endpoint]
    at_a = ControlChannel(bob.private, a.core.public_key, local_is_registry=False)
    message = at_a.open(notice)
    assert (message["op"], message["gone"], message["session"]) == (
        "use_replica",
        "b",
        bob.session,
    )


def test_a_node_that_moves_keeps_its_address_name_and_trust_and_gets_its_pushes_there(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    a, b = replicas
    alice, bob = pair
    _trust_across(replicas, alice, bob)
    before = a.store.node_by_key(alice.key)
    _speak_at(b, alice)
    moved = b.register(alice, "alice", lan=["10.0.0.5:51820"])
    assert before is not None and (moved["ipv4"], moved["hostname"]) == (
        str(before.ipv4),
        "alice",
    )
    assert moved["replica"] == "b"
    b.store.flush()
    assert [p["hostname"] for p in b.call(alice, "trust_list")["trusted"]] == ["bob"]
    b.call(bob, "untrust", peer=alice.b64)
    [revoked] = b.pushes(alice)
    assert (revoked["op"], revoked["trusted"]) == ("trust_changed", False)


def test_a_node_that_goes_up_by_the_lease_as_it_moves_is_taken_at_once(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    """What RegistryLink does when it switches replicas: its first message at the new
    one is above the floor the old one stored, so nothing is refused (one round trip
    saved per node in a mass failover)."""
    a, b = replicas
    alice, _ = pair
    for _ in range(3):
        assert a.call(alice, "lookup", query="bob")["ok"]
    a.store.flush()
    b.nodes[alice.endpoint] = alice
    alice.channel = ControlChannel(alice.private, b.core.public_key, local_is_registry=False)
    alice.counter = itertools.count(next(alice.counter) + COUNTER_LEASE)
    assert b.register(alice, "alice", lan=["10.0.0.5:51820"])["replica"] == "b"
    assert b.core.counters["stale_counter"] == 0


def test_an_untrust_at_one_replica_stops_the_other_relaying_at_once(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    a, b = replicas
    alice, bob = pair
    carol = a.new_node()
    a.register(carol, "carol")
    a.call(alice, "trust_request", peer=carol.b64, message="")
    a.call(carol, "trust_respond", peer=alice.b64, approve=True)
    pump(b, expect_pushes=False)  # b hears of the trust (nothing for its nodes)
    b.nodes[carol.endpoint] = carol
    relayed = pack_relay(carol.key, WIREGUARD_DATAGRAM)
    a.deliver(relayed, alice.endpoint)
    assert a.core.counters["relayed_packets"] == 1
    a.inbox.pop(carol.endpoint)
    _speak_at(b, carol)
    b.call(carol, "untrust", peer=alice.b64)  # carol's request reaches the other replica
    pump(a)
    a.deliver(relayed, alice.endpoint)
    assert a.core.counters["relay_not_trusted"] == 1
    assert bob.key not in (k for k, _ in a.core.routes.trust_cache)


def test_what_a_node_sent_one_replica_cannot_be_replayed_to_another(
    replicas: tuple[World, World], pair: tuple[FakeNode, FakeNode]
) -> None:
    """Replicas share the registry's key, so a node's message to one opens at the other.
    A replica that heard the node before it moved keeps a window below what the node sent
    since: the floor in the database (the other replica's lease) refuses the replay."""
    a, b = replicas
    alice, _ = pair
    _speak_at(b, alice)
    b.register(alice, "alice")
    b.store.flush()
    pump(a, expect_pushes=False)  # a hears that alice is at b now
    _speak_at(a, alice)  # back to the first replica
    a.register(alice, "alice")
    a.store.flush()
    assert pump(b, expect_pushes=False) == 0, "b hears that alice is elsewhere"
    captured = alice.last_sent
    b.deliver(remac(alice, captured, b.now), alice.endpoint)
    [notice] = b.messages(alice)
    assert notice["code"] == "stale_counter"
    record = b.store.node_by_key(alice.key)
    assert record is not None and record.replica == "a", "the replay moved nothing"


def test_a_replica_lets_go_of_what_another_process_changed(
    postgres_server: ThrowawayPostgres,
) -> None:
    """A heartbeat reads its node from memory on PostgreSQL; what the operator (or
    another replica) changes is announced, and the next read goes to the database."""
    url = postgres_server.create_database("cache_announced")
    replica, admin = Store(url, NETWORK), Store(url, NETWORK)
    replica.listen(PUSH_CHANNEL)
    key = public_key(generate_private_key())
    replica.register(key, "alice", (), START)
    assert replica.node_and_requests(key)[0].hostname == "alice"  # type: ignore[union-attr]
    admin.rename_node("alice", "alice-2")
    assert replica.node_and_requests(key)[0].hostname == "alice", "remembered until told"
    listener = replica._db._listener  # type: ignore[attr-defined]
    deadline = time.monotonic() + NOTIFY_WAIT_S
    while replica.node_and_requests(key)[0].hostname == "alice":  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the rename was never announced"
        select.select([listener.fileno()], [], [], NOTIFY_WAIT_S)  # its own may come first
        assert replica.notifications() == []
    assert replica.node_and_requests(key)[0].hostname == "alice-2"  # type: ignore[union-attr]
    replica.close()
    admin.close()


def test_a_replica_whose_notifications_stop_says_so_and_reads_the_database(
    postgres_server: ThrowawayPostgres,
) -> None:
    url = postgres_server.create_database("listener_lost")
    replica, admin = Store(url, NETWORK), Store(url, NETWORK)
    fd = replica.listen(PUSH_CHANNEL)
    assert fd is not None
    key = public_key(generate_private_key())
    replica.register(key, "alice", (), START)
    replica.node_and_requests(key)
    postgres_server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = 'listener_lost' AND query LIKE 'LISTEN%'"
    )
    deadline = time.monotonic() + NOTIFY_WAIT_S
    with pytest.raises(DatabaseError, match="stopped sending notifications"):
        while time.monotonic() < deadline:  # its own announcements may come first
            select.select([fd], [], [], NOTIFY_WAIT_S)
            replica.notifications()
    admin.rename_node("alice", "alice-2")
    found, _ = replica.node_and_requests(key)
    assert found is not None and found.hostname == "alice-2", "nothing stale is served"
    replica.close()
    admin.close()


def test_a_notification_from_any_role_that_may_connect_pushes_nothing(
    replicas: tuple[World, World],
    pair: tuple[FakeNode, FakeNode],
    postgres_server: ThrowawayPostgres,
) -> None:
    """Issue 22: any role that may connect could NOTIFY pilotif_push, and the replica
    sealed what it said for its node as the registry's own word. Now a notification
    only wakes a replica, which reads what the registry's role left it."""
    a, b = replicas
    alice, bob = pair
    _trust_across(replicas, alice, bob)
    [bob_seen] = a.call(alice, "trust_list")["trusted"]
    with intruder_connection(postgres_server, a.location) as intruder:  # type: ignore[arg-type]
        intruder.execute(
            "SELECT pg_notify('pilotif_push', %s)",
            (forged_revocation("a", alice.b64, bob_seen),),
        )
        intruder.execute("SELECT pg_notify('pilotif_push', %s)", (json.dumps({"trust": []}),))
    assert pump(a, expect_pushes=False) == 0
    assert a.messages(alice) == []
    # A real push still crosses.
    b.call(bob, "untrust", peer=alice.b64)
    assert pump(a) == 1
    [revoked] = a.pushes(alice)
    assert (revoked["op"], revoked["trusted"]) == ("trust_changed", False)


def test_a_role_that_listens_hears_no_push_and_cannot_read_or_write_the_notes(
    replicas: tuple[World, World],
    pair: tuple[FakeNode, FakeNode],
    postgres_server: ThrowawayPostgres,
) -> None:
    """LISTEN needs no privilege either: a punch crossing replicas named both nodes'
    endpoints in the notification. Now it says nothing, and the notes are the
    registry role's alone."""
    a, b = replicas
    alice, bob = pair
    _trust_across(replicas, alice, bob)
    with intruder_connection(postgres_server, a.location) as intruder:  # type: ignore[arg-type]
        intruder.execute("LISTEN pilotif_push")
        assert a.call(alice, "connect", peer=bob.b64)["ok"]
        pump(b)
        [to_bob] = b.pushes(bob)
        assert to_bob["op"] == "punch"
        heard = [note.payload for note in intruder.notifies(timeout=1.0, stop_after=1)]
        assert heard == [""]
        for statement in (
            "SELECT note FROM replica_notes",
            "INSERT INTO replica_notes (replica, note, created) VALUES ('a', '{}', 0)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                intruder.execute(statement)


def test_tables_stay_private_when_the_operator_grants_public_by_default(
    postgres_server: ThrowawayPostgres,
) -> None:
    """An operator's default privileges may hand PUBLIC every new table; the registry's
    tables (its key among them) are revoked from PUBLIC all the same."""
    url = postgres_server.create_database("granted_by_default")
    postgres_server.psql(
        "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO PUBLIC", database="granted_by_default"
    )
    Store(url, NETWORK).close()
    with intruder_connection(postgres_server, url) as intruder:
        for statement in (
            "SELECT private_key FROM registry_identity",
            "INSERT INTO replica_notes (replica, note, created) VALUES ('a', '{}', 0)",
            "SELECT hostname FROM nodes",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                intruder.execute(statement)


def test_notes_left_for_a_replica_that_died_are_dropped(replicas: tuple[World, World]) -> None:
    a, _ = replicas
    a.store.leave_notes(PUSH_CHANNEL, ["gone"], "{}", a.now)
    for _ in range(DETACH_EVERY):
        a.core.keep_replicas(a.now + NOTE_LIFETIME_S + 1)
    assert a.store.take_notes("gone") == []
