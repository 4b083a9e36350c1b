"""Issue 24 item 3, the registry's side: a dual-stack node registers over one family and
tells us its endpoint of the other (`family_endpoint`, sent to our address of that
family); we keep both (neither overwrites the other) and give its peers both; an older
node that sends one endpoint is served as before. Against the registry core in memory
(tests/unit/test_registry_server.py's World)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pilotif.control.wire import REGISTRY_COOKIE_TYPE, format_endpoint
from pilotif.registry.presence import Presence
from pilotif.wg.events import Endpoint
from pilotif.wg.messages import parse_cookie_reply
from tests.unit.test_registry_server import FakeNode, World, trust

V6_PORT = 40999


@pytest.fixture
def world(registry_db: str | Path) -> Iterator[World]:
    built = World(registry_db)
    yield built
    built.store.close()


@pytest.fixture
def alice(world: World) -> FakeNode:
    node = world.new_node()
    world.register(node, "alice", lan=["10.0.0.5:51820"])
    return node


@pytest.fixture
def bob(world: World) -> FakeNode:
    node = world.new_node()
    world.register(node, "bob")
    return node


def v6_of(node: FakeNode) -> Endpoint:
    """The node's global IPv6 endpoint (no NAT: the same port as its socket)."""
    return (f"3fff:0:0:{node.endpoint[1] % 65536:x}::2", V6_PORT)


def call_from(world: World, node: FakeNode, source: Endpoint, op: str) -> dict[str, Any]:
    """A request of `node` that reaches the registry from `source` (its other family):
    a new address of a known key proves it with a cookie first, as RegistryLink does."""
    world.deliver(node.seal(op), source)
    [datagram] = world.inbox.pop(source)
    if datagram[0] == REGISTRY_COOKIE_TYPE:
        cookie = parse_cookie_reply(datagram, REGISTRY_COOKIE_TYPE)
        assert node.cookies.consume_reply(cookie, world.now)
        world.deliver(node.reseal(node.last_payload), source)
        [datagram] = world.inbox.pop(source)
    reply = node.channel.open(datagram)
    assert reply["op"] == "reply", reply
    return reply


def punch_candidates(world: World, asker: FakeNode, peer: FakeNode) -> list[str]:
    """The candidates of `peer` that `asker`'s punch names."""
    assert world.call(asker, "connect", peer=peer.b64)["ok"]
    [punch] = world.pushes(asker)
    world.pushes(peer)
    candidates: list[str] = punch["candidates"]
    return candidates


def test_both_public_endpoints_are_kept_and_given_to_peers(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    trust(world, alice, bob)
    reply = call_from(world, bob, v6_of(bob), "family_endpoint")
    assert reply["ok"] and reply["kept"], reply
    assert reply["public_endpoint"] == format_endpoint(v6_of(bob))
    # A heartbeat over IPv4 afterwards does not overwrite the IPv6 one.
    world.register(bob, "bob")
    assert punch_candidates(world, alice, bob) == [
        format_endpoint(bob.endpoint),
        format_endpoint(v6_of(bob)),
    ]


def test_an_older_node_that_sends_one_endpoint_gets_what_it_got(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    trust(world, alice, bob)
    assert punch_candidates(world, bob, alice) == [
        format_endpoint(alice.endpoint),
        "10.0.0.5:51820",
    ]


def test_an_endpoint_of_the_family_it_registers_over_is_not_kept(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    """One endpoint per family: the one it registers from wins (a second IPv4 endpoint
    would let any address of that family stand beside the registered one)."""
    trust(world, alice, bob)
    reply = call_from(world, bob, ("198.18.200.9", 5555), "family_endpoint")
    assert reply["ok"] and not reply["kept"], reply
    assert punch_candidates(world, alice, bob) == [format_endpoint(bob.endpoint)]


def test_a_node_must_register_before_it_reports_another_family(world: World) -> None:
    stranger = world.new_node()
    reply = call_from(world, stranger, v6_of(stranger), "family_endpoint")
    assert (reply["ok"], reply["code"]) == (False, "not_registered")


@pytest.mark.parametrize(
    ("registered", "other", "kept"),
    [
        (("198.18.0.11", 1000), ("3fff::2", 1000), True),
        (("3fff::2", 1000), ("198.18.0.11", 1000), True),
        (("198.18.0.11", 1000), ("198.18.0.12", 1000), False),
        (("3fff::2", 1000), ("3fff::3", 1000), False),
    ],
)
def test_presence_keeps_one_endpoint_per_family(
    registered: Endpoint, other: Endpoint, kept: bool
) -> None:
    presence = Presence()
    key = b"k" * 32
    assert not presence.note_other_family(key, other)  # not registered yet
    presence.note_seen(key, registered, 1.0)
    assert presence.note_other_family(key, other) is kept
    assert presence.endpoint(key) == registered
    assert presence.other_family_endpoint(key) == (other if kept else None)
    # It registers over the other family now (its link failed over): one per family.
    presence.note_seen(key, other, 2.0)
    assert presence.other_family_endpoint(key) is None
    presence.forget(key)
    assert presence.endpoint(key) is None
