"""Issue 11 at the registry core: join keys (one-off, reusable, expiring, revoked), a
closed registry, networks that hide their members, tags that an operator granted, names
that come back after `expire_after_s`, limits on new nodes, and renames told to peers."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pilotif.registry.core import RegistryCore
from pilotif.registry.register import (
    NEW_NODES_BURST,
    NEW_NODES_IPV4_24_BURST,
    NEW_NODES_IPV6_32_BURST,
    NEW_NODES_IPV6_48_BURST,
)
from pilotif.registry.schema import SCHEMA_VERSION
from pilotif.registry.store import Store
from pilotif.wg.events import Endpoint
from tests.unit.test_registry_server import NETWORK, START, FakeNode, World, trust

DAY_S = 86_400.0


@pytest.fixture
def world(registry_db: str | Path) -> Iterator[World]:
    built = World(registry_db)
    yield built
    built.store.close()


def _close(world: World, *, expire_after_s: float = 30 * DAY_S) -> None:
    """The same registry, restarted with --require-join-key (and --expire-after)."""
    world.core = RegistryCore(
        world.private_key,
        world.store,
        first_counter=world.core.counter,
        require_join_key=True,
        expire_after_s=expire_after_s,
    )


def _key(world: World, **options: Any) -> str:
    settings: dict[str, Any] = {
        "network": None,
        "tags": (),
        "reusable": False,
        "expires": None,
        **options,
    }
    _, text = world.store.create_join_key(now=world.now, **settings)
    return text


def _refusal(world: World, node: FakeNode, hostname: str, **fields: Any) -> str:
    reply = world.call(node, "register", hostname=hostname, tags=[], lan=[], **fields)
    assert reply["ok"] is False, reply
    assert reply["error"] and reply["hint"], reply
    return str(reply["code"])


def test_a_closed_registry_refuses_a_node_without_a_key_and_admits_one_with(
    world: World,
) -> None:
    _close(world)
    assert _refusal(world, world.new_node(), "stranger") == "join_key_required"
    reply = world.register(world.new_node(), "member", join_key=_key(world))
    assert reply["ipv4"].startswith("100.")


def test_a_one_off_key_admits_one_node_and_that_node_again(world: World) -> None:
    _close(world)
    key = _key(world)
    first = world.new_node()
    world.register(first, "first", join_key=key)
    world.register(first, "first", join_key=key)
    assert _refusal(world, world.new_node(), "second", join_key=key) == "join_key_used"
    assert [k.uses for k in world.store.join_keys()] == [1]


def test_a_reusable_key_admits_many(world: World) -> None:
    _close(world)
    key = _key(world, reusable=True)
    for index in range(3):
        world.register(world.new_node(), f"worker-{index}", join_key=key)
    assert [k.uses for k in world.store.join_keys()] == [3]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("expired", "join_key_expired"),
        ("revoked", "join_key_revoked"),
        ("forged", "join_key_unknown"),
    ],
)
def test_a_key_that_is_not_good_is_refused_with_its_reason(
    world: World, change: str, code: str
) -> None:
    _close(world)
    key = _key(world, expires=START + 60)
    if change == "expired":
        world.now = START + 61
    elif change == "revoked":
        world.store.revoke_join_key(world.store.join_keys()[0].id)
    else:
        key = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    assert _refusal(world, world.new_node(), "node", join_key=key) == code


@pytest.mark.parametrize(
    "text", ["", "pjk_", "pjk_zzzzzzzz_x", "hello", "pjk_0123abcd_" + "x" * 65]
)
def test_text_that_is_not_a_join_key_is_an_unknown_key(world: World, text: str) -> None:
    assert _refusal(world, world.new_node(), "node", join_key=text) == "join_key_unknown"


def test_a_revoked_key_does_not_turn_away_the_nodes_it_admitted(world: World) -> None:
    _close(world)
    node = world.new_node()
    world.register(node, "member", join_key=_key(world))
    world.store.revoke_join_key(world.store.join_keys()[0].id)
    world.register(node, "member")


def test_a_key_puts_the_node_in_its_network_with_its_tags_granted(world: World) -> None:
    world.store.create_network("fleet", closed=False, now=world.now)
    key = _key(world, network="fleet", tags=("team",))
    member, other = world.new_node(), world.new_node()
    reply = world.register(member, "member", tags=["gpu"], join_key=key)
    world.register(other, "other", tags=["team"])
    assert (reply["network_name"], reply["granted_tags"]) == ("fleet", ["team"])
    found = {n["hostname"]: n for n in world.call(other, "lookup", query="tag:team")["nodes"]}
    assert found["member"]["granted_tags"] == ["team"] and found["member"]["tags"] == ["gpu"]
    assert "granted_tags" not in found["other"] and found["other"]["tags"] == ["team"]
    assert [(n.name, n.members) for n in world.store.networks()] == [("fleet", 1)]


def test_a_closed_network_hides_its_members_from_outsiders_only(world: World) -> None:
    world.store.create_network("secret", closed=True, now=world.now)
    key = _key(world, network="secret", reusable=True)
    member, insider, outsider = world.new_node(), world.new_node(), world.new_node()
    world.register(member, "member", join_key=key)
    world.register(insider, "insider", join_key=key)
    world.register(outsider, "outsider")
    assert world.call(outsider, "lookup", query="member")["nodes"] == []
    assert [n["hostname"] for n in world.call(insider, "lookup", query="member")["nodes"]] == [
        "member"
    ]


def test_a_name_unseen_past_expire_after_can_be_taken_again(world: World) -> None:
    _close(world, expire_after_s=DAY_S)
    key = _key(world, reusable=True)
    old = world.new_node()
    world.register(old, "worker", join_key=key)
    world.now += DAY_S - 1
    assert _refusal(world, world.new_node(), "worker", join_key=key) == "name_taken"
    world.now += 2
    world.register(world.new_node(), "worker", join_key=key)
    world.core.expire(world.now)
    assert [n.hostname for n in world.store.nodes()] == ["worker"]


def test_expiry_frees_the_addresses_of_nodes_unseen_for_long(world: World) -> None:
    _close(world, expire_after_s=DAY_S)
    key = _key(world, reusable=True)
    gone = world.new_node()
    address = world.register(gone, "gone", join_key=key)["ipv4"]
    world.now += DAY_S + 1
    world.core.expire(world.now)
    assert world.store.nodes() == []
    assert world.register(world.new_node(), "next", join_key=key)["ipv4"] == address


def test_new_nodes_from_one_address_are_limited(world: World) -> None:
    codes = []
    for index in range(int(NEW_NODES_BURST) + 1):
        node = world.new_node()
        node.endpoint = ("198.18.200.1", 50000 + index)
        world.nodes[node.endpoint] = node
        reply = world.call(node, "register", hostname=f"n{index}", tags=[], lan=[])
        codes.append(reply.get("code"))
    assert codes[:-1] == [None] * int(NEW_NODES_BURST)
    assert codes[-1] == "rate_limited"


def _new_node_from(world: World, endpoint: Endpoint, hostname: str) -> str | None:
    """Register a new node from `endpoint`; its refusal code (None: admitted)."""
    node = world.new_node()
    node.endpoint = endpoint
    world.nodes[endpoint] = node
    reply = world.call(node, "register", hostname=hostname, tags=[], lan=[])
    return reply.get("code")


def test_new_nodes_from_many_64s_of_one_48_get_what_the_48_gets(world: World) -> None:
    """Issue 22: 20 new nodes per /64, and a /48 holds 65,536 of them. The /48 and the
    /32 around it are counted too."""
    codes = [
        _new_node_from(world, (f"2001:db8:1:{index:x}::1", 40000), f"v6-{index}")
        for index in range(int(NEW_NODES_IPV6_48_BURST) + 1)
    ]
    assert codes == [None] * int(NEW_NODES_IPV6_48_BURST) + ["rate_limited"]
    # The other /48s of that /32 share what is left of its budget.
    more = int(NEW_NODES_IPV6_32_BURST - NEW_NODES_IPV6_48_BURST)
    codes = [
        _new_node_from(world, (f"2001:db8:{2 + index}::1", 40000), f"other-48-{index}")
        for index in range(more + 1)
    ]
    assert codes == [None] * more + ["rate_limited"]
    # Another /32 is not held up by this one.
    assert _new_node_from(world, ("2001:db9::1", 40000), "elsewhere") is None


def test_new_nodes_from_many_addresses_of_one_ipv4_24_get_what_the_24_gets(world: World) -> None:
    codes = [
        _new_node_from(world, (f"198.19.7.{index + 1}", 40000), f"v4-{index}")
        for index in range(int(NEW_NODES_IPV4_24_BURST) + 1)
    ]
    assert codes == [None] * int(NEW_NODES_IPV4_24_BURST) + ["rate_limited"]
    assert _new_node_from(world, ("198.19.8.1", 40000), "next-24") is None


def test_a_renamed_node_is_pushed_to_its_peers(world: World) -> None:
    alice, bob = world.new_node(), world.new_node()
    world.register(alice, "alice")
    world.register(bob, "bob")
    trust(world, alice, bob)
    world.messages(bob)
    world.register(alice, "alice-2")
    pushes = world.pushes(bob)
    assert [(p["op"], p["node"]["hostname"], p["trusted"]) for p in pushes] == [
        ("trust_changed", "alice-2", True)
    ]


def test_a_database_from_before_networks_and_schema_versions_is_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    old = Store(path, NETWORK)
    for statement in (
        "DROP INDEX nodes_network",
        "ALTER TABLE nodes DROP COLUMN network",
        "DROP TABLE schema_version",
        "DROP TABLE registry_identity",
    ):
        old._db.execute(statement)
    old.close()
    reopened = Store(path, old.network)
    assert reopened.nodes() == []
    row = reopened._db.execute("SELECT version FROM schema_version").fetchone()
    assert row is not None and row[0] == SCHEMA_VERSION
    reopened.close()
