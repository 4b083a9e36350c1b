"""The registry database: addresses, names, tags, trust, and everything after a reopen."""

import contextlib
import stat
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from pilotif.control.identity import ipv6_for_key
from pilotif.registry.database import DatabaseError
from pilotif.registry.schema import SCHEMA_VERSION
from pilotif.registry.store import (
    NameTaken,
    NetworkFull,
    NoRequest,
    Store,
    StoreError,
    UnknownNode,
)
from pilotif.wg.crypto import generate_private_key, public_key

NETWORK = IPv4Network("100.64.0.0/10")
NOW = 1_700_000_000.0


def new_key() -> bytes:
    return public_key(generate_private_key())


@pytest.fixture
def store(registry_db: str | Path) -> Iterator[Store]:
    opened = Store(registry_db, NETWORK)
    yield opened
    opened.close()


@pytest.fixture
def alice(store: Store) -> bytes:
    key = new_key()
    store.register(key, "alice", ("gpu",), NOW)
    return key


@pytest.fixture
def bob(store: Store) -> bytes:
    key = new_key()
    store.register(key, "bob", (), NOW)
    return key


def test_the_first_nodes_get_the_lowest_addresses(store: Store) -> None:
    first, new = store.register(new_key(), "one", (), NOW)
    second, _ = store.register(new_key(), "two", (), NOW)
    assert new
    assert first.ipv4 == IPv4Address("100.64.0.1")
    assert second.ipv4 == IPv4Address("100.64.0.2")


def test_addresses_skip_dot_zero_and_dot_255(registry_db: str | Path) -> None:
    store = Store(registry_db, IPv4Network("10.9.0.0/23"))
    addresses = [store.register(new_key(), f"n{i}", (), NOW)[0].ipv4 for i in range(256)]
    assert IPv4Address("10.9.0.255") not in addresses
    assert IPv4Address("10.9.1.0") not in addresses
    assert addresses[253] == IPv4Address("10.9.0.254")
    assert addresses[254] == IPv4Address("10.9.1.1")
    store.close()


def test_a_full_network_refuses_new_nodes(registry_db: str | Path) -> None:
    store = Store(registry_db, IPv4Network("10.9.0.0/30"))
    assert [store.register(new_key(), f"n{i}", (), NOW)[0].ipv4 for i in range(2)] == [
        IPv4Address("10.9.0.1"),
        IPv4Address("10.9.0.2"),
    ]
    with pytest.raises(NetworkFull):
        store.register(new_key(), "late", (), NOW)
    store.close()


def test_registering_again_keeps_the_address_and_may_rename(store: Store, alice: bytes) -> None:
    store.register(new_key(), "other", (), NOW)
    record, new = store.register(alice, "alice-2", ("cpu",), NOW + 1)
    assert not new
    assert record.ipv4 == IPv4Address("100.64.0.1")
    assert (record.hostname, record.tags) == ("alice-2", ("cpu",))
    assert store.node_by_hostname("alice") is None


def test_a_name_of_another_key_is_taken(store: Store, alice: bytes, bob: bytes) -> None:
    with pytest.raises(NameTaken):
        store.register(new_key(), "alice", (), NOW)
    with pytest.raises(NameTaken):
        store.register(alice, "bob", (), NOW)
    record = store.node_by_key(alice)
    assert record is not None and record.hostname == "alice"


def test_lookups_by_key_name_address_and_tag(store: Store, alice: bytes, bob: bytes) -> None:
    record = store.node_by_key(alice)
    assert record is not None
    assert store.node_by_hostname("alice") == record
    assert store.node_by_ipv4(record.ipv4) == record
    assert record.ipv6 == ipv6_for_key(alice)
    assert store.node_by_ipv6(record.ipv6) == record
    assert store.nodes_with_tag("gpu", 20) == [record]
    assert store.nodes_with_tag("gp", 20) == []
    assert store.node_by_key(new_key()) is None


def test_tag_lookups_are_capped(store: Store) -> None:
    for i in range(5):
        store.register(new_key(), f"worker-{i}", ("pool",), NOW)
    assert [n.hostname for n in store.nodes_with_tag("pool", 3)] == [
        "worker-0",
        "worker-1",
        "worker-2",
    ]
    assert [n.hostname for n in store.nodes_with_tag("pool", 3, offset=3)] == [
        "worker-3",
        "worker-4",
    ]


def test_mark_seen_records_where_and_record_counter_raises_the_floor(
    store: Store, alice: bytes
) -> None:
    store.mark_seen(
        alice, endpoint="198.18.0.1:4000", lan_endpoints=("10.0.0.2:4000",), session=None, now=NOW
    )
    store.record_counter(alice, 50)
    store.mark_seen(alice, endpoint="198.18.0.1:4001", lan_endpoints=(), session=9, now=NOW + 6)
    store.record_counter(alice, 45)
    record = store.node_by_key(alice)
    assert record is not None
    assert (record.endpoint, record.lan_endpoints, record.last_seen) == (
        "198.18.0.1:4001",
        (),
        NOW + 6,
    )
    assert record.highest_counter == 50
    store.record_counter(alice, 60)
    assert store.all_endpoints() == [(alice, "198.18.0.1:4001", NOW + 6, 9, None)]
    record = store.node_by_key(alice)
    assert record is not None and record.highest_counter == 60


def test_touch_only_raises_last_seen(store: Store, alice: bytes, bob: bytes) -> None:
    store.mark_seen(alice, endpoint="198.18.0.1:1", lan_endpoints=(), session=1, now=NOW + 10)
    store.touch([(alice, NOW + 5), (bob, NOW + 7)])
    seen = {key: store.node_by_key(key) for key in (alice, bob)}
    assert [(r.last_seen if r else None) for r in seen.values()] == [NOW + 10, NOW + 7]


def _written_endpoints(location: str | Path) -> dict[bytes, str | None]:
    """The endpoints in the database, read by another connection (as `registry admin`
    or another replica would)."""
    with contextlib.closing(Store(location, NETWORK)) as other:
        return {node.public_key: node.endpoint for node in other.nodes()}


def test_heartbeats_are_written_together_and_read_at_once(registry_db: str | Path) -> None:
    path = registry_db
    store = Store(path, NETWORK)
    keys = [new_key() for _ in range(3)]
    for number, key in enumerate(keys):
        store.register(key, f"node-{number}", (), NOW)
    for number, key in enumerate(keys):
        store.mark_seen(
            key, endpoint=f"198.18.0.1:{number + 1}", lan_endpoints=(), session=1, now=NOW
        )
        store.record_counter(key, 3)
    assert store.unwritten == 6
    assert set(_written_endpoints(path).values()) == {None}
    record = store.node_by_key(keys[2])
    assert record is not None and (record.endpoint, record.highest_counter) == ("198.18.0.1:3", 3)
    store.flush()
    assert store.unwritten == 0
    assert sorted(_written_endpoints(path).values()) == [f"198.18.0.1:{n}" for n in (1, 2, 3)]
    store.close()


def test_heartbeats_outlive_a_transaction_that_rolls_back(store: Store, alice: bytes) -> None:
    store.register(new_key(), "bob", (), NOW)
    store.mark_seen(alice, endpoint="198.18.0.1:9", lan_endpoints=(), session=1, now=NOW)
    store.record_counter(alice, 8)
    with pytest.raises(NameTaken):
        store.register(new_key(), "bob", (), NOW)
    assert store.unwritten == 2
    store.flush()
    record = store.node_by_key(alice)
    assert record is not None and (record.endpoint, record.highest_counter) == ("198.18.0.1:9", 8)


def test_a_trust_request_is_pending_until_approved(store: Store, alice: bytes, bob: bytes) -> None:
    outcome = store.request_trust(alice, bob, "hi", NOW)
    assert (outcome.state, outcome.changed) == ("pending", False)
    assert [(n.hostname, m) for n, m in store.incoming(bob)] == [("alice", "hi")]
    assert [n.hostname for n in store.outgoing(alice)] == ["bob"]
    assert not store.is_trusted(alice, bob)
    outcome = store.respond(bob, alice, True, NOW)
    assert (outcome.state, outcome.changed) == ("trusted", True)
    assert store.is_trusted(alice, bob) and store.is_trusted(bob, alice)
    assert store.incoming(bob) == [] and store.outgoing(alice) == []
    assert [n.hostname for n in store.trusted(alice)] == ["bob"]
    assert [n.hostname for n in store.trusted(bob)] == ["alice"]
    again = store.respond(bob, alice, True, NOW)
    assert (again.state, again.changed) == ("trusted", False)


def test_requests_both_ways_are_trusted_at_once(store: Store, alice: bytes, bob: bytes) -> None:
    store.request_trust(alice, bob, "", NOW)
    outcome = store.request_trust(bob, alice, "", NOW)
    assert (outcome.state, outcome.changed) == ("trusted", True)
    assert store.is_trusted(alice, bob)
    assert store.incoming(alice) == [] and store.incoming(bob) == []


def test_a_node_is_read_with_whether_requests_to_it_wait(
    store: Store, alice: bytes, bob: bytes
) -> None:
    assert store.node_and_requests(bob) == (store.node_by_key(bob), False)
    store.request_trust(alice, bob, "", NOW)
    assert store.node_and_requests(bob) == (store.node_by_key(bob), True)
    assert store.node_and_requests(alice)[1] is False
    assert store.node_and_requests(new_key()) == (None, False)


def test_a_kept_node_is_read_without_a_query_until_another_process_changes_it(
    tmp_path: Path,
) -> None:
    """A heartbeat reads its node from memory (a query each was a third of its cost at
    100,000 nodes); what `registry admin` commits from its own process is read at
    once."""
    path = tmp_path / "registry.db"
    registry, admin = Store(path, NETWORK), Store(path, NETWORK)
    alice, bob = new_key(), new_key()
    registry.register(alice, "alice", (), NOW)
    registry.register(bob, "bob", (), NOW)
    registry.node_and_requests(alice)
    statements: list[str] = []
    registry._db._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    record, asked = registry.node_and_requests(alice)
    assert (record is not None, asked) == (True, False)
    assert not [s for s in statements if "FROM nodes" in s]
    admin.set_granted_tag("alice", "gpu", True)
    record, _ = registry.node_and_requests(alice)
    assert record is not None and record.granted_tags == ("gpu",)
    admin.rename_node("alice", "carol")
    admin.request_trust(bob, alice, "", NOW)
    record, asked = registry.node_and_requests(alice)
    assert record is not None and (record.hostname, asked) == ("carol", True)
    admin.remove_node("carol")
    assert registry.node_and_requests(alice) == (None, False)
    admin.close()
    registry.close()


def _beat(store: Store, key: bytes) -> None:
    """A heartbeat, pending until the next transaction or flush (every 100 ms)."""
    store.mark_seen(key, endpoint="198.18.0.1:1", lan_endpoints=(), session=1, now=NOW + 1)


def test_a_trust_request_to_a_node_whose_heartbeat_waits_is_read_at_once(
    store: Store, alice: bytes, bob: bytes
) -> None:
    store.node_and_requests(bob)
    _beat(store, bob)
    store.request_trust(alice, bob, "hi", NOW + 2)
    assert store.node_and_requests(bob)[1] is True


def test_a_new_name_of_a_node_whose_heartbeat_waits_is_read_at_once(
    store: Store, alice: bytes
) -> None:
    store.node_and_requests(alice)
    _beat(store, alice)
    store.register(alice, "alice2", ("cpu",), NOW + 2)
    record, _ = store.node_and_requests(alice)
    assert record is not None
    assert (record.hostname, record.tags, record.endpoint) == ("alice2", ("cpu",), "198.18.0.1:1")


def test_a_rejected_request_is_gone(store: Store, alice: bytes, bob: bytes) -> None:
    store.request_trust(alice, bob, "", NOW)
    assert store.respond(bob, alice, False, NOW).state == "none"
    assert store.incoming(bob) == [] and not store.is_trusted(alice, bob)
    with pytest.raises(NoRequest):
        store.respond(bob, alice, True, NOW)


def test_untrust_revokes_from_either_side(store: Store, alice: bytes, bob: bytes) -> None:
    store.request_trust(alice, bob, "", NOW)
    store.respond(bob, alice, True, NOW)
    outcome = store.untrust(bob, alice)
    assert (outcome.state, outcome.changed) == ("none", True)
    assert not store.is_trusted(alice, bob)
    assert not store.untrust(alice, bob).changed


def test_trust_needs_a_known_other_node(store: Store, alice: bytes) -> None:
    with pytest.raises(UnknownNode):
        store.request_trust(alice, new_key(), "", NOW)
    with pytest.raises(StoreError):
        store.request_trust(alice, alice, "", NOW)


def test_everything_is_there_after_a_reopen(registry_db: str | Path) -> None:
    path = registry_db
    store = Store(path, NETWORK)
    alice, bob, carol = new_key(), new_key(), new_key()
    for key, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        store.register(key, name, ("t",), NOW)
    store.mark_seen(alice, endpoint="198.18.0.1:1", lan_endpoints=(), session=1, now=NOW)
    store.record_counter(alice, 7)
    store.request_trust(alice, bob, "", NOW)
    store.respond(bob, alice, True, NOW)
    store.request_trust(carol, alice, "please", NOW)
    before = [store.node_by_key(k) for k in (alice, bob, carol)]
    store.close()

    reopened = Store(path, NETWORK)
    assert [reopened.node_by_key(k) for k in (alice, bob, carol)] == before
    assert reopened.is_trusted(alice, bob)
    assert [(n.hostname, m) for n, m in reopened.incoming(alice)] == [("carol", "please")]
    record, new = reopened.register(new_key(), "dave", (), NOW)
    assert new and record.ipv4 == IPv4Address("100.64.0.4")
    reopened.close()


def test_the_sqlite_file_is_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "state" / "registry.db"
    Store(path, NETWORK).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_database_of_a_newer_schema_is_refused_and_left_alone(
    registry_db: str | Path,
) -> None:
    store = Store(registry_db, NETWORK)
    store.register(new_key(), "alice", (), NOW)
    with store._transaction() as cursor:
        cursor.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(DatabaseError, match=f"version {SCHEMA_VERSION + 1}, newer"):
        Store(registry_db, NETWORK)
    with pytest.raises(DatabaseError):
        Store(registry_db, NETWORK)


def test_an_unreachable_postgresql_server_is_one_clear_error(tmp_path: Path) -> None:
    url = f"postgresql://pilotif:secret@/registry?host={tmp_path}&port=1"
    with pytest.raises(DatabaseError, match="cannot reach the database") as refused:
        Store(url, NETWORK)
    assert "secret" not in str(refused.value)


def test_a_freed_address_is_taken_again_once_the_top_of_the_network_is_reached(
    registry_db: str | Path,
) -> None:
    """New nodes take the address after the highest one (an index lookup, not a walk
    over every node); the gaps that removed nodes leave are filled once the top is full."""
    store = Store(registry_db, IPv4Network("10.9.0.0/29"))
    names = [f"n{i}" for i in range(6)]
    for name in names[:3]:
        store.register(new_key(), name, (), NOW)
    store.remove_node("n0")
    assert store.register(new_key(), "n3", (), NOW)[0].ipv4 == IPv4Address("10.9.0.4")
    for name in names[4:]:
        store.register(new_key(), name, (), NOW)
    assert store.register(new_key(), "late", (), NOW)[0].ipv4 == IPv4Address("10.9.0.1")
    with pytest.raises(NetworkFull):
        store.register(new_key(), "later", (), NOW)
    store.close()


def test_expiry_removes_the_nodes_last_seen_or_never_seen_and_created_before(
    store: Store,
) -> None:
    keys = {name: new_key() for name in ("seen-old", "seen-new", "never-old", "never-new")}
    for name in ("seen-old", "seen-new", "never-old"):
        store.register(keys[name], name, (), NOW)
    store.register(keys["never-new"], "never-new", (), NOW + 100)
    for name, seen in (("seen-old", NOW + 10), ("seen-new", NOW + 60)):
        store.mark_seen(keys[name], endpoint="198.18.0.1:1", lan_endpoints=(), session=1, now=seen)
    expired = store.expire_nodes(NOW + 50)
    assert sorted(node.hostname for node in expired) == ["never-old", "seen-old"]
    assert store.node_by_key(keys["seen-old"]) is None
    assert store.node_by_key(keys["never-old"]) is None
    assert store.node_by_key(keys["seen-new"]) is not None
    assert store.node_by_key(keys["never-new"]) is not None
