"""The standalone relay's core, sans-IO: nodes (the node's own RegistryLink) attach with
tickets, and the relay carries datagrams only between pairs a ticket vouches for."""

import os
import random
from typing import Any

import pytest

from pilotif.control.gate import NEW_KEY_BURST
from pilotif.control.tickets import (
    TICKET_LIFETIME_S,
    check_ticket,
    issue_ticket,
    ticket_key,
)
from pilotif.control.wire import (
    REGISTRY_COOKIE_TYPE,
    RELAY_SOURCE_UNKNOWN,
    RELAY_TYPE,
    pack_relay,
    unpack_relay,
)
from pilotif.node.registry_link import RegistryLink, RelaySourceUnknown, Reply
from pilotif.relay.core import ATTACH_TIMEOUT_S, RelayCore
from pilotif.wg.cookie import CookieGenerator
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.events import Endpoint
from pilotif.wg.messages import parse_cookie_reply

NOW = 1_700_000_000.0
RELAY_AT: Endpoint = ("198.18.0.9", 7947)
DATAGRAM = bytes((4, 0, 0, 0)) + os.urandom(60)


class Node:
    """A node at `endpoint` that talks to the relay through the node's RegistryLink."""

    def __init__(self, lab: "Lab", endpoint: Endpoint, private: bytes | None = None) -> None:
        self.lab = lab
        self.private = private or generate_private_key()
        self.key = public_key(self.private)
        self.endpoint = endpoint
        self.link = RegistryLink(
            self.private, RELAY_AT, lab.relay.public_key, first_counter=0, first_id=1
        )
        self.instance: int | None = None
        self.inbox: list[bytes] = []

    def attach(self, tickets: list[str] | None = None) -> dict[str, Any]:
        """Attach (again), learning the relay's instance first if needed; the reply."""
        reply = self.request({"tickets": tickets or []})
        if reply.get("code") == "new_instance":
            reply = self.request({"tickets": tickets or []})
        return reply

    def request(self, fields: dict[str, Any]) -> dict[str, Any]:
        request_id = self.link.request("attach", {"instance": self.instance, **fields}, NOW)
        for item in self.lab.pump(self):
            if isinstance(item, Reply) and item.request_id == request_id:
                instance = item.message.get("instance")
                self.instance = instance if isinstance(instance, int) else None
                return item.message
        raise AssertionError("the relay did not answer")

    def ticket(self, peer: "Node", expires: float | None = None) -> str:
        when = int(NOW + TICKET_LIFETIME_S if expires is None else expires)
        return issue_ticket(self.lab.ticket_key, self.key, peer.key, when)

    def send_to(self, peer: "Node", data: bytes = DATAGRAM) -> list[tuple[bytes, Endpoint]]:
        return self.lab.relay.handle_datagram(pack_relay(peer.key, data), self.endpoint, NOW)


class Lab:
    """A relay, the registry key it trusts, and nodes at distinct addresses."""

    def __init__(
        self, registry_private: bytes | None = None, relay_private: bytes | None = None
    ) -> None:
        self.registry_private = registry_private or generate_private_key()
        self.relay_private = relay_private or generate_private_key()
        self.relay = RelayCore(
            self.relay_private, public_key(self.registry_private), first_counter=0
        )
        self.ticket_key = ticket_key(self.registry_private, self.relay.public_key)
        self.hosts = 0

    def node(self, private: bytes | None = None) -> Node:
        self.hosts += 1
        return Node(self, (f"198.18.1.{self.hosts}", 40000 + self.hosts), private)

    def pump(self, node: Node, now: float = NOW) -> list[Any]:
        """Deliver the node's outgoing datagrams and its answers (cookie replies included)."""
        inputs: list[Any] = []
        for _ in range(10):
            out, node.link.outgoing = node.link.outgoing, []
            if not out:
                break
            for data, destination in out:
                assert destination == RELAY_AT
                for answer, to in self.relay.handle_datagram(data, node.endpoint, now):
                    assert to == node.endpoint
                    inputs += node.link.receive(answer, now, RELAY_AT)
        return inputs


@pytest.fixture
def lab() -> Lab:
    return Lab()


def attached_pair(lab: Lab) -> tuple[Node, Node]:
    alice, bob = lab.node(), lab.node()
    assert alice.attach([alice.ticket(bob)])["accepted"] == 1
    assert bob.attach([bob.ticket(alice)])["accepted"] == 1
    return alice, bob


def test_a_ticket_lets_a_pair_talk_both_ways(lab: Lab) -> None:
    alice, bob = attached_pair(lab)
    [(data, to)] = alice.send_to(bob)
    assert to == bob.endpoint
    assert unpack_relay(data) == (alice.key, DATAGRAM)
    [(data, to)] = bob.send_to(alice, b"\x04reply")
    assert to == alice.endpoint and unpack_relay(data) == (bob.key, b"\x04reply")
    assert lab.relay.counters["relayed_packets"] == 2


def test_the_first_attach_learns_the_instance_and_binds_nothing(lab: Lab) -> None:
    alice, bob = lab.node(), lab.node()
    bob.attach()
    first = alice.request({"tickets": [alice.ticket(bob)]})
    assert first["ok"] is False and first["code"] == "new_instance"
    assert first["instance"] == lab.relay.instance
    assert alice.send_to(bob) == [(RELAY_SOURCE_UNKNOWN, alice.endpoint)]


def test_no_ticket_no_relay(lab: Lab) -> None:
    alice, bob = lab.node(), lab.node()
    alice.attach()
    bob.attach()
    assert alice.send_to(bob) == []
    assert lab.relay.counters["relay_not_trusted"] == 1


def test_a_ticket_proves_only_its_own_pair_at_its_own_relay(lab: Lab) -> None:
    alice, bob, mallory = lab.node(), lab.node(), lab.node()
    other_relay_key = ticket_key(lab.registry_private, public_key(generate_private_key()))
    stolen = alice.ticket(bob)
    forged = issue_ticket(lab.ticket_key, mallory.key, bob.key, int(NOW) + 60)[:-4] + "AAA="
    elsewhere = issue_ticket(other_relay_key, mallory.key, bob.key, int(NOW) + 60)
    bob.attach()
    reply = mallory.attach([stolen, forged, elsewhere, "not base64!", 7])
    assert reply["ok"] is True and reply["accepted"] == 0
    assert mallory.send_to(bob) == []
    assert lab.relay.counters["bad_ticket"] == 5
    assert lab.relay.counters["relay_not_trusted"] == 1


def test_an_expired_ticket_is_refused_and_a_valid_one_runs_out(lab: Lab) -> None:
    alice, bob = lab.node(), lab.node()
    bob.attach()
    assert alice.attach([alice.ticket(bob, expires=NOW - 1)])["accepted"] == 0
    assert lab.relay.counters["expired_ticket"] == 1
    alice.attach([alice.ticket(bob, expires=NOW + 30)])
    assert len(alice.send_to(bob)) == 1
    late = pack_relay(bob.key, DATAGRAM)
    assert lab.relay.handle_datagram(late, alice.endpoint, NOW + 31) == []
    assert lab.relay.counters["relay_not_trusted"] == 1


def test_a_datagram_from_an_unknown_address_gets_a_notice_smaller_than_itself(
    lab: Lab,
) -> None:
    alice, bob = attached_pair(lab)
    moved = ("198.18.7.7", 50000)
    datagram = pack_relay(bob.key, DATAGRAM)
    [(notice, to)] = lab.relay.handle_datagram(datagram, moved, NOW)
    assert notice == RELAY_SOURCE_UNKNOWN and to == moved and len(notice) < len(datagram)
    assert alice.link.receive(notice, NOW, RELAY_AT) == [RelaySourceUnknown()]


def test_nothing_goes_to_a_peer_that_is_not_attached(lab: Lab) -> None:
    alice, bob = lab.node(), lab.node()
    alice.attach([alice.ticket(bob)])
    assert alice.send_to(bob) == []
    assert lab.relay.counters["relay_offline"] == 1


def test_nodes_silent_for_the_timeout_are_forgotten(lab: Lab) -> None:
    alice, bob = attached_pair(lab)
    lab.relay.expire(NOW + ATTACH_TIMEOUT_S + 1)
    assert lab.relay.attached == 0
    assert alice.send_to(bob) == [(RELAY_SOURCE_UNKNOWN, alice.endpoint)]


def remac_from(relay: RelayCore, datagram: bytes, source: Endpoint) -> bytes:
    """`datagram` with mac2 written with the cookie the relay gives `source`: what an
    attacker who recorded it can do from its own address."""
    cookies = CookieGenerator(relay.public_key)
    message = bytearray(datagram)
    cookies.add_macs(message, NOW)
    [(reply, _)] = relay.handle_datagram(bytes(message), source, NOW)
    assert cookies.consume_reply(parse_cookie_reply(reply, REGISTRY_COOKIE_TYPE), NOW)
    cookies.add_macs(message, NOW)
    return bytes(message)


def test_an_attach_replayed_from_another_address_binds_nothing(lab: Lab) -> None:
    alice, bob = attached_pair(lab)
    alice.link.request("attach", {"instance": alice.instance, "tickets": []}, NOW)
    [(captured, _)] = alice.link.outgoing
    lab.pump(alice)
    attacker = ("198.18.9.9", 666)
    replayed = remac_from(lab.relay, captured, attacker)
    [(_, to)] = lab.relay.handle_datagram(replayed, attacker, NOW)
    assert to == attacker and lab.relay.counters["stale_counter"] == 1
    assert alice.send_to(bob)[0][1] == bob.endpoint
    assert bob.send_to(alice)[0][1] == alice.endpoint


def test_an_attach_recorded_before_a_restart_binds_nothing_after_it(lab: Lab) -> None:
    alice, _ = attached_pair(lab)
    alice.link.request("attach", {"instance": alice.instance, "tickets": []}, NOW)
    [(captured, _)] = alice.link.outgoing
    alice.link.outgoing = []
    restarted = RelayCore(lab.relay_private, public_key(lab.registry_private), first_counter=100)
    replayed = remac_from(restarted, captured, alice.endpoint)
    assert len(restarted.handle_datagram(replayed, alice.endpoint, NOW)) == 1
    assert restarted.counters["new_instance"] == 1
    assert restarted.attached == 0


def test_a_node_that_restarted_counts_above_the_relays_floor(lab: Lab) -> None:
    alice, bob = attached_pair(lab)
    for _ in range(5):
        alice.attach([alice.ticket(bob)])
    again = Node(lab, alice.endpoint)
    again.private, again.key = alice.private, alice.key
    again.link = RegistryLink(
        alice.private, RELAY_AT, lab.relay.public_key, first_counter=0, first_id=500
    )
    assert again.attach([again.ticket(bob)])["ok"] is True
    assert lab.relay.counters["stale_counter"] >= 1
    assert len(again.send_to(bob)) == 1


def test_an_address_taken_by_another_node_detaches_the_first(lab: Lab) -> None:
    alice, bob = attached_pair(lab)
    carol = Node(lab, alice.endpoint)
    carol.attach()
    assert bob.send_to(alice) == []
    assert lab.relay.counters["relay_offline"] == 1
    assert lab.relay.attached == 2


def test_hostile_input_is_counted_and_never_raises(lab: Lab) -> None:
    alice, bob = attached_pair(lab)
    rng = random.Random(7)
    valid = pack_relay(bob.key, DATAGRAM)
    alice.link.request("attach", {"instance": alice.instance}, NOW)
    [(control, _)] = alice.link.outgoing
    alice.link.outgoing = []
    inputs = [b"", bytes((RELAY_TYPE,)), valid[:36], valid[:20], control[:50], control[:-1]]
    inputs += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) for _ in range(500)]
    inputs += [bytes((0x50,)) + os.urandom(rng.randrange(0, 1400)) for _ in range(200)]
    inputs += [bytes((0x51, 1, 0, 0)) + os.urandom(40)]
    sent = 0
    for data in inputs:
        for answer, _ in lab.relay.handle_datagram(data, alice.endpoint, NOW):
            sent += 1
            assert len(answer) <= max(len(data), 64)
    assert lab.relay.counters["relayed_packets"] == 0
    assert sum(lab.relay.counters.values()) >= len(inputs)
    assert len(alice.send_to(bob)) == 1


def test_tickets_are_checked_against_the_holder() -> None:
    key = os.urandom(32)
    holder, peer = os.urandom(32), os.urandom(32)
    ticket = issue_ticket(key, holder, peer, int(NOW) + 10)
    assert check_ticket(key, holder, ticket, NOW) == (peer, int(NOW) + 10)
    # The pair, not the direction: the peer could hold the same proof about the holder.
    assert check_ticket(key, peer, issue_ticket(key, peer, holder, 5), 0) == (holder, 5)


def test_fresh_keys_from_one_host_share_one_budget_whatever_their_ports(lab: Lab) -> None:
    """Each attach from a key the relay has no channel for costs it an X25519. A host
    that proves a few hundred ports gets what one port gets: NEW_KEY_BURST, counted
    by its address (an IPv6 /64 likewise), as at the registry."""
    answered = 0
    for number in range(int(NEW_KEY_BURST) + 20):
        node = Node(lab, ("198.18.2.1", 20000 + number))
        node.link.request("attach", {"instance": None, "tickets": []}, NOW)
        answered += sum(isinstance(item, Reply) for item in lab.pump(node))
    assert answered == NEW_KEY_BURST
    assert lab.relay.counters["new_key_rate_limited"] == 20
