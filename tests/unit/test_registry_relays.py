"""The registry's side of standalone relays: it names them in every registration reply
and hands each node tickets, one per trusted peer, that only the named relay accepts."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotif.control.relay_info import RelayInfo, RelaySpecError, parse_relay, relays_from_json
from pilotif.control.tickets import TICKET_LIFETIME_S, check_ticket, ticket_key
from pilotif.registry.lookups import TICKET_PAGE_LIMIT
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.keys import encode_key
from tests.unit.test_registry_server import START, FakeNode, World, trust
from tests.unit.test_relay_core import Lab

RELAY_PRIVATE = [generate_private_key() for _ in range(2)]
RELAYS = tuple(
    RelayInfo(public_key(private), (f"198.18.5.{i + 1}", 7947))
    for i, private in enumerate(RELAY_PRIVATE)
)


@pytest.fixture
def world(registry_db: str | Path) -> Iterator[World]:
    built = World(registry_db, relays=RELAYS)
    yield built
    built.store.close()


def tickets_for(world: World, node: FakeNode, relay: RelayInfo) -> list[str]:
    tickets: list[str] = []
    offset = 0
    while True:
        reply = world.call(node, "relay_tickets", relay=encode_key(relay.key), offset=offset)
        assert reply["ok"], reply
        tickets += reply["tickets"]
        if "next_offset" not in reply:
            return tickets
        offset = reply["next_offset"]


def test_registration_names_the_relays(world: World) -> None:
    node = world.new_node()
    reply = world.register(node, "alice")
    assert relays_from_json(reply["relays"]) == list(RELAYS)


def test_a_registry_without_relays_names_none(registry_db: str | Path) -> None:
    world = World(registry_db)
    try:
        assert "relays" not in world.register(world.new_node(), "alice")
    finally:
        world.store.close()


def test_tickets_name_every_trusted_peer_and_only_they(world: World) -> None:
    alice = world.new_node()
    world.register(alice, "alice")
    peers = []
    for index in range(TICKET_PAGE_LIMIT + 3):
        peer = world.new_node()
        world.register(peer, f"peer-{index}")
        trust(world, alice, peer)
        peers.append(peer)
    stranger = world.new_node()
    world.register(stranger, "stranger")
    tickets = tickets_for(world, alice, RELAYS[0])
    key = ticket_key(RELAY_PRIVATE[0], public_key(world.private_key))
    proven = [check_ticket(key, alice.key, ticket, START) for ticket in tickets]
    assert sorted(peer for peer, _ in proven) == sorted(p.key for p in peers)
    assert {expires for _, expires in proven} == {int(START) + TICKET_LIFETIME_S}
    # Made for the first relay: the second refuses them.
    other = ticket_key(RELAY_PRIVATE[1], public_key(world.private_key))
    with pytest.raises(ValueError, match="bad_ticket"):
        check_ticket(other, alice.key, tickets[0], START)


def test_the_relay_accepts_what_the_registry_issued(world: World) -> None:
    alice, bob = world.new_node(), world.new_node()
    world.register(alice, "alice")
    world.register(bob, "bob")
    trust(world, alice, bob)
    [ticket] = tickets_for(world, alice, RELAYS[1])
    lab = Lab(world.private_key, RELAY_PRIVATE[1])
    at_relay = {node: lab.node(node.private) for node in (alice, bob)}
    assert at_relay[alice].attach([ticket])["accepted"] == 1
    at_relay[bob].attach()
    [(_, to)] = at_relay[alice].send_to(at_relay[bob])
    assert to == at_relay[bob].endpoint


def test_tickets_for_a_relay_the_registry_does_not_list_are_refused(world: World) -> None:
    alice = world.new_node()
    world.register(alice, "alice")
    unknown = encode_key(public_key(generate_private_key()))
    for relay in (unknown, "not a key", 5):
        reply = world.call(alice, "relay_tickets", relay=relay)
        assert reply["ok"] is False and reply["code"] == "unknown_relay"


def test_relays_are_given_as_key_at_address() -> None:
    text = f"{encode_key(RELAYS[0].key)}@198.18.5.1:7947"
    assert parse_relay(text) == RELAYS[0]
    for bad in (
        "198.18.5.1:7947",
        f"{encode_key(RELAYS[0].key)}@relay.example:7947",
        "AAAA@198.18.5.1:7947",
        f"{encode_key(RELAYS[0].key)}@198.18.5.1:99999",
    ):
        with pytest.raises(RelaySpecError):
            parse_relay(bad)
    assert relays_from_json([{"key": 1}, "x", RELAYS[0].to_json()]) == [RELAYS[0]]
    assert relays_from_json("nothing") == []
