"""The registry core driven in memory by fake nodes: registration, lookups, trust,
punching, relay, and hostile input. No sockets; time is a number the test moves."""

import itertools
import re
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotif.cli.main import cli
from pilotif.control import wire
from pilotif.control.forwarder import RELAY_BURST_BYTES
from pilotif.control.gate import CONTROL_BURST, NEW_KEY_BURST, UNPROVEN_BURST
from pilotif.control.identity import ipv6_for_key
from pilotif.control.ratelimit import TokenBuckets
from pilotif.control.relay_info import RelayInfo
from pilotif.control.wire import (
    CONTROL_HEADER_SIZE,
    COOKIE_CHALLENGE_INDEX,
    KEY_REQUEST,
    REGISTRY_COOKIE_TYPE,
    RELAY_SOURCE_UNKNOWN,
    REQUEST_MACS_SIZE,
    ControlChannel,
    format_endpoint,
    pack_relay,
    unpack_key_reply,
    unpack_relay,
)
from pilotif.registry import core as server
from pilotif.registry import directory, lookups, register, requests
from pilotif.registry import trust as trust_ops
from pilotif.registry.core import RegistryCore
from pilotif.registry.presence import ONLINE_WINDOW_S
from pilotif.registry.register import PENDING_PUSH_LIMIT, SEEN_WRITE_S
from pilotif.registry.requests import MAX_LAN_ENDPOINTS, MAX_TAG_CHARS, MAX_TAGS
from pilotif.registry.routes import TRUST_CACHE_S
from pilotif.registry.store import MAX_PENDING_PER_REQUESTER, MAX_PENDING_PER_TARGET, Store
from pilotif.registry.trust import MAX_TRUST_MESSAGE_BYTES
from pilotif.wg.constants import COOKIE_REPLY_SIZE
from pilotif.wg.cookie import CookieGenerator
from pilotif.wg.crypto import PrivateKey, dh, generate_private_key, public_key
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import encode_key
from pilotif.wg.messages import parse_cookie_reply

NETWORK = IPv4Network("100.64.0.0/10")
START = 1_700_000_000.0
WIREGUARD_DATAGRAM = bytes((4, 0, 0, 0)) + bytes(44)


class FakeNode:
    """A node's side of the control channel at a fixed public endpoint, with mac1 and
    mac2 on what it sends (`clock` gives the cookie's time)."""

    def __init__(
        self, registry_public: bytes, endpoint: Endpoint, clock: Callable[[], float]
    ) -> None:
        private = generate_private_key()
        self.private = private
        self.key = public_key(private)
        self.b64 = encode_key(self.key)
        self.endpoint = endpoint
        self.channel = ControlChannel(private, registry_public, local_is_registry=False)
        self.cookies = CookieGenerator(registry_public)
        self._clock = clock
        self.counter = itertools.count(1)
        self._ids = itertools.count(1)
        self.session = int.from_bytes(self.key[:7])
        self.last_payload: dict[str, Any] = {}
        self.last_sent = b""
        self.received: list[dict[str, Any]] = []
        """Messages opened but not yet taken by a test."""

    def seal(self, op: str, *, with_id: bool = True, **fields: Any) -> bytes:
        payload = {"op": op, "session": self.session, **fields}
        if with_id:
            payload["id"] = next(self._ids)
        return self.reseal(payload)

    def reseal(self, payload: dict[str, Any]) -> bytes:
        """`payload` sealed with the next counter and our current cookie."""
        self.last_payload = payload
        message = bytearray(self.channel.seal(payload, next(self.counter)))
        message += bytes(REQUEST_MACS_SIZE)
        self.cookies.add_macs(message, self._clock())
        self.last_sent = bytes(message)
        return self.last_sent


def remac(node: FakeNode, datagram: bytes, now: float) -> bytes:
    """`datagram` with mac1 and mac2 written again with the node's cookie (what an
    on-path attacker, who sees the cookie replies, can do)."""
    message = bytearray(datagram)
    node.cookies.add_macs(message, now)
    return bytes(message)


class World:
    """A registry core on a database (SQLite or PostgreSQL), fake nodes, and their
    inboxes."""

    def __init__(
        self,
        location: str | Path,
        private_key: bytes | None = None,
        replica: str | None = None,
        relays: tuple[RelayInfo, ...] = (),
    ) -> None:
        self.location = location
        self.private_key = private_key or generate_private_key()
        self.now = START
        self.inbox: dict[Endpoint, list[bytes]] = {}
        self._hosts = itertools.count(1)
        self.nodes: dict[Endpoint, FakeNode] = {}
        self.store = Store(location, NETWORK)
        self.core = RegistryCore(
            self.private_key, self.store, first_counter=1, replica=replica, relays=relays
        )

    def restart(self, *, crash: bool = False) -> None:
        """A new registry process on the same state (its counter lease carries over),
        after a clean stop or (`crash`) without one."""
        if not crash:
            self.core.save()
        self.store.close()
        self.store = Store(self.location, NETWORK)
        self.core = RegistryCore(self.private_key, self.store, first_counter=self.core.counter)

    def new_node(self) -> FakeNode:
        host = next(self._hosts)
        node = FakeNode(
            self.core.public_key,
            # Spread over /24s: the registry limits new nodes per /24 too.
            (f"198.18.{host % 256}.{host // 256 % 250 + 1}", 40000 + host),
            self.clock,
        )
        self.nodes[node.endpoint] = node
        return node

    def clock(self) -> float:
        return self.now

    def deliver(self, data: bytes, source: Endpoint) -> None:
        """Hand a datagram to the registry; a cookie reply to a node's own message is
        taken by that node, which sends the message again if it was a challenge (as
        RegistryLink does; a renewal beside an answer is only kept)."""
        for datagram, destination in self.core.handle_datagram(data, source, self.now):
            node = self.nodes.get(destination)
            if (
                datagram[0] == REGISTRY_COOKIE_TYPE
                and node is not None
                and data == node.last_sent
                and node.cookies.consume_reply(
                    reply := parse_cookie_reply(datagram, REGISTRY_COOKIE_TYPE), self.now
                )
            ):
                if reply.receiver == COOKIE_CHALLENGE_INDEX:
                    self.deliver(node.reseal(node.last_payload), source)
                continue
            self.inbox.setdefault(destination, []).append(datagram)

    def call(self, node: FakeNode, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request from the node's endpoint and return the reply it gets."""
        self.deliver(node.seal(op, **fields), node.endpoint)
        self._open(node)
        replies = [m for m in node.received if m["op"] == "reply"]
        assert len(replies) == 1, replies
        node.received.remove(replies[0])
        return replies[0]

    def messages(self, node: FakeNode) -> list[dict[str, Any]]:
        """Everything the node received that no test took yet, in order."""
        self._open(node)
        taken, node.received = node.received, []
        return taken

    def pushes(self, node: FakeNode) -> list[dict[str, Any]]:
        return [m for m in self.messages(node) if m["op"] != "reply"]

    def _open(self, node: FakeNode) -> None:
        # In arrival order, as the node's replay window requires.
        node.received += [node.channel.open(d) for d in self.inbox.pop(node.endpoint, [])]

    def register(self, node: FakeNode, hostname: str, **fields: Any) -> dict[str, Any]:
        reply = self.call(
            node, "register", **{"hostname": hostname, "tags": [], "lan": [], **fields}
        )
        assert reply["ok"], reply
        return reply


@pytest.fixture
def world(registry_db: str | Path) -> Iterator[World]:
    built = World(registry_db)
    yield built
    built.store.close()


@pytest.fixture
def alice(world: World) -> FakeNode:
    node = world.new_node()
    world.register(node, "alice", tags=["gpu"], lan=["10.0.0.5:51820"])
    return node


@pytest.fixture
def bob(world: World) -> FakeNode:
    node = world.new_node()
    world.register(node, "bob")
    return node


def trust(world: World, a: FakeNode, b: FakeNode) -> None:
    assert world.call(a, "trust_request", peer=b.b64, message="")["state"] == "pending"
    assert world.call(b, "trust_respond", peer=a.b64, approve=True)["state"] == "trusted"
    world.pushes(a)
    world.pushes(b)


# -- registration ------------------------------------------------------------------


def test_register_assigns_addresses_and_reports_the_public_endpoint(world: World) -> None:
    first, second = world.new_node(), world.new_node()
    reply = world.register(first, "First-Agent")
    assert reply["ipv4"] == "100.64.0.1"
    assert reply["ipv6"] == str(ipv6_for_key(first.key))
    assert reply["hostname"] == "first-agent"
    assert reply["public_endpoint"] == f"{first.endpoint[0]}:{first.endpoint[1]}"
    assert reply["network"] == str(NETWORK)
    assert world.register(second, "second")["ipv4"] == "100.64.0.2"


def test_a_registration_survives_a_registry_restart(world: World, alice: FakeNode) -> None:
    world.restart()
    other = world.new_node()
    assert world.register(other, "other")["ipv4"] == "100.64.0.2"
    reply = world.register(alice, "alice")
    assert reply["ipv4"] == "100.64.0.1"


def test_a_name_of_another_key_is_refused_with_a_hint(world: World, alice: FakeNode) -> None:
    thief = world.new_node()
    reply = world.call(thief, "register", hostname="alice", tags=[], lan=[])
    assert (reply["ok"], reply["code"]) == (False, "name_taken")
    assert "hostname" in reply["hint"]


def test_a_node_may_rename_itself_to_a_free_name(world: World, alice: FakeNode) -> None:
    assert world.register(alice, "alice-2")["ipv4"] == "100.64.0.1"
    assert world.call(alice, "lookup", query="alice")["nodes"] == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"hostname": "-bad-"}, "invalid_hostname"),
        ({"hostname": 5}, "bad_request"),
        ({"hostname": "ok", "tags": ["UPPER ok?"]}, "invalid_tag"),
        ({"hostname": "ok", "tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, "invalid_tag"),
        ({"hostname": "ok", "lan": "10.0.0.1:1"}, "bad_request"),
        ({"hostname": "x" * 1100}, "bad_request"),
    ],
)
def test_invalid_registrations_say_what_is_wrong(
    world: World, fields: dict[str, Any], code: str
) -> None:
    reply = world.call(world.new_node(), "register", **fields)
    assert (reply["ok"], reply["code"]) == (False, code)


def test_a_replayed_register_is_refused_also_after_a_restart(world: World, alice: FakeNode) -> None:
    captured = alice.last_sent
    thief_endpoint = ("198.18.9.9", 9999)
    # From another address its mac2 proves nothing: a cookie reply, no bigger, and no move.
    world.deliver(captured, thief_endpoint)
    [cookie_reply] = world.inbox.pop(thief_endpoint)
    assert len(cookie_reply) < len(captured)
    # From the node's own address (a spoofer's copy) it is a replay: the node alone
    # hears that its counter is stale, and nothing changes.
    world.deliver(captured, alice.endpoint)
    [notice] = world.messages(alice)
    captured_counter = int.from_bytes(captured[36:CONTROL_HEADER_SIZE], "little")
    assert (notice["code"], notice["floor"]) == ("stale_counter", captured_counter)
    world.call(alice, "lookup", query="alice")
    world.restart()
    # The restarted registry takes the cookies it gave before (its secrets are its key's
    # and the time's): the copy is opened, and the counter it stored refuses it.
    world.deliver(captured, alice.endpoint)
    [notice] = world.messages(alice)
    assert notice["code"] == "stale_counter"
    assert world.core.counters["stale_counter"] == 1
    # An on-path thief can read cookie replies and write macs: the stored counter stops it.
    world.call(alice, "lookup", query="alice")
    world.deliver(remac(alice, captured, world.now), alice.endpoint)
    assert world.core.counters["stale_counter"] == 2
    [notice] = world.messages(alice)
    assert notice["code"] == "stale_counter"
    record = world.store.node_by_key(alice.key)
    assert record is not None and record.endpoint == f"{alice.endpoint[0]}:{alice.endpoint[1]}"


def test_after_a_crash_the_counter_lease_refuses_replays_and_the_node_goes_above_it(
    world: World, alice: FakeNode
) -> None:
    captured = alice.last_sent
    world.call(alice, "lookup", query="alice")
    world.restart(crash=True)  # nothing saved: the database has the lease, not the counter
    stale = world.call(alice, "lookup", query="alice")
    sent = int.from_bytes(alice.last_sent[36:CONTROL_HEADER_SIZE], "little")
    assert stale["code"] == "stale_counter" and stale["floor"] > sent
    world.deliver(remac(alice, captured, world.now), alice.endpoint)
    assert world.core.counters["stale_counter"] == 2
    world.messages(alice)
    alice.counter = itertools.count(stale["floor"] + 1)
    assert world.call(alice, "lookup", query="alice")["ok"]


def test_a_heartbeat_writes_only_what_changed(world: World, alice: FakeNode) -> None:
    world.store.flush()
    world.now += 20
    world.register(alice, "alice", tags=["gpu"], lan=["10.0.0.5:51820"])
    assert world.store.unwritten == 0, "nothing changed: the heartbeat stays in memory"
    world.register(alice, "alice", tags=["gpu"], lan=["10.0.0.6:51820"])
    assert world.store.unwritten == 1
    record = world.store.node_by_key(alice.key)
    assert record is not None and record.lan_endpoints == ("10.0.0.6:51820",)
    world.store.flush()
    world.now += SEEN_WRITE_S
    world.register(alice, "alice", tags=["gpu"], lan=["10.0.0.6:51820"])
    record = world.store.node_by_key(alice.key)
    assert record is not None and record.last_seen == world.now


def test_after_a_clean_stop_the_next_message_is_taken_at_once(
    world: World, alice: FakeNode
) -> None:
    world.restart()
    assert world.call(alice, "lookup", query="alice")["ok"]
    assert world.core.counters["stale_counter"] == 0


def test_other_requests_need_a_registration_first(world: World) -> None:
    reply = world.call(world.new_node(), "lookup", query="alice")
    assert (reply["ok"], reply["code"]) == (False, "not_registered")


def test_unknown_ops_are_refused_and_requests_without_id_get_no_reply(
    world: World, alice: FakeNode
) -> None:
    assert world.call(alice, "fly")["code"] == "unknown_op"
    world.deliver(alice.seal("lookup", with_id=False, query="alice"), alice.endpoint)
    assert world.messages(alice) == []


def test_the_key_request_is_answered_with_the_registry_key(world: World) -> None:
    world.deliver(KEY_REQUEST, ("198.18.0.50", 1))
    [answer] = world.inbox[("198.18.0.50", 1)]
    assert unpack_key_reply(answer) == world.core.public_key


# -- lookups -----------------------------------------------------------------------


def test_lookup_by_name_address_key_and_tag(world: World, alice: FakeNode, bob: FakeNode) -> None:
    by_name = world.call(bob, "lookup", query="alice.pilot")["nodes"]
    assert by_name == [
        {
            "hostname": "alice",
            "public_key": alice.b64,
            "ipv4": "100.64.0.1",
            "ipv6": str(ipv6_for_key(alice.key)),
            "tags": ["gpu"],
            "online": True,
        }
    ]
    for query in ("100.64.0.1", str(ipv6_for_key(alice.key)), alice.b64, "tag:gpu", "ALICE"):
        assert world.call(bob, "lookup", query=query)["nodes"] == by_name, query
    assert world.call(bob, "lookup", query="carol")["nodes"] == []
    assert world.call(bob, "lookup", query="100.64.0.9")["nodes"] == []


def test_lookup_says_offline_after_the_heartbeats_stop(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    world.now += ONLINE_WINDOW_S + 1
    [node] = world.call(bob, "lookup", query="alice")["nodes"]
    assert node["online"] is False


def test_tag_lookups_are_capped_and_paged(world: World) -> None:
    nodes = [world.new_node() for _ in range(25)]
    for index, node in enumerate(nodes):
        world.register(node, f"worker-{index:02d}-{'x' * 40}", tags=["pool"])
    seen: list[str] = []
    offset = 0
    while True:
        reply = world.call(nodes[0], "lookup", query="tag:pool", offset=offset)
        assert 0 < len(reply["nodes"]) <= 20
        seen += [n["hostname"] for n in reply["nodes"]]
        if "next_offset" not in reply:
            break
        offset = reply["next_offset"]
    assert seen == sorted(f"worker-{i:02d}-{'x' * 40}" for i in range(25))


# -- trust -------------------------------------------------------------------------


def test_trust_request_pending_then_approved_tells_both(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    reply = world.call(alice, "trust_request", peer=bob.b64, message="hello bob")
    assert reply["state"] == "pending"
    [asked] = world.pushes(bob)
    assert asked["op"] == "trust_requested"
    assert (asked["node"]["hostname"], asked["message"]) == ("alice", "hello bob")
    listing = world.call(bob, "trust_list")
    assert [i["node"]["hostname"] for i in listing["incoming"]] == ["alice"]
    assert [n["hostname"] for n in world.call(alice, "trust_list")["outgoing"]] == ["bob"]

    assert world.call(bob, "trust_respond", peer=alice.b64, approve=True)["state"] == "trusted"
    for node, other in ((alice, "bob"), (bob, "alice")):
        [changed] = world.pushes(node)
        assert changed["op"] == "trust_changed" and changed["trusted"] is True
        assert changed["node"]["hostname"] == other
    assert [n["hostname"] for n in world.call(alice, "trust_list")["trusted"]] == ["bob"]


def test_requests_both_ways_are_trusted_at_once(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    world.call(alice, "trust_request", peer=bob.b64, message="")
    world.pushes(bob)
    assert world.call(bob, "trust_request", peer=alice.b64, message="")["state"] == "trusted"
    assert [m["op"] for m in world.pushes(alice)] == ["trust_changed"]
    assert [m["op"] for m in world.pushes(bob)] == ["trust_changed"]


def test_a_rejected_request_leaves_no_trust(world: World, alice: FakeNode, bob: FakeNode) -> None:
    world.call(alice, "trust_request", peer=bob.b64, message="")
    assert world.call(bob, "trust_respond", peer=alice.b64, approve=False)["state"] == "none"
    assert world.pushes(alice) == []
    listing = world.call(bob, "trust_list")
    assert (listing["trusted"], listing["incoming"]) == ([], [])
    late = world.call(bob, "trust_respond", peer=alice.b64, approve=True)
    assert (late["ok"], late["code"]) == (False, "no_request")


def test_untrust_tells_both_sides(world: World, alice: FakeNode, bob: FakeNode) -> None:
    trust(world, alice, bob)
    assert world.call(bob, "untrust", peer=alice.b64)["state"] == "none"
    for node in (alice, bob):
        [changed] = world.pushes(node)
        assert (changed["op"], changed["trusted"]) == ("trust_changed", False)
    assert world.call(alice, "trust_list")["trusted"] == []


def test_an_offline_target_gets_the_request_when_it_comes_back(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    world.now += ONLINE_WINDOW_S + 1
    world.register(alice, "alice")
    assert world.call(alice, "trust_request", peer=bob.b64, message="later")["state"] == "pending"
    assert bob.endpoint not in world.inbox
    world.now += 1
    world.register(bob, "bob")
    [asked] = world.pushes(bob)
    assert (asked["op"], asked["message"]) == ("trust_requested", "later")


def test_trust_with_an_unknown_or_malformed_peer_is_refused(world: World, alice: FakeNode) -> None:
    stranger = world.new_node()
    assert world.call(alice, "trust_request", peer=stranger.b64)["code"] == "unknown_peer"
    assert world.call(alice, "trust_request", peer="nope")["code"] == "bad_request"
    assert world.call(alice, "trust_request", peer=alice.b64)["code"] == "bad_request"


def test_the_biggest_allowed_identity_and_message_still_fit_every_push(world: World) -> None:
    tags = [f"{i}{'t' * (MAX_TAG_CHARS - 1)}" for i in range(MAX_TAGS)]
    lan = [f"[fd00:{i + 1}:ffff:ffff:ffff:ffff:ffff:ffff]:65535" for i in range(MAX_LAN_ENDPOINTS)]
    big, other = world.new_node(), world.new_node()
    world.register(big, "b" * 63, tags=tags, lan=lan)
    world.register(other, "o" * 63, tags=tags, lan=lan)
    message = "é" * (MAX_TRUST_MESSAGE_BYTES // 2 - 1)
    world.call(big, "trust_request", peer=other.b64, message=message)
    [asked] = world.pushes(other)
    assert asked["message"] == message
    world.call(other, "trust_respond", peer=big.b64, approve=True)
    world.pushes(big)
    world.pushes(other)
    world.call(big, "connect", peer=other.b64)
    [punch] = world.pushes(other)
    assert punch["candidates"][1:] == lan
    too_long = world.call(big, "trust_request", peer=other.b64, message=message + "éé")
    assert too_long["code"] == "message_too_long"


def test_trust_list_pages_when_it_does_not_fit_one_datagram(world: World) -> None:
    hub = world.new_node()
    world.register(hub, "hub")
    spokes = [world.new_node() for _ in range(12)]
    for index, spoke in enumerate(spokes):
        world.register(spoke, f"spoke-{index:02d}", tags=["a-long-tag-name", "another-tag"])
        trust(world, spoke, hub)
    names: list[str] = []
    offset: int | None = 0
    while offset is not None:
        reply = world.call(hub, "trust_list", offset=offset)
        names += [n["hostname"] for n in reply["trusted"]]
        offset = reply.get("next_offset")
    assert names == [f"spoke-{i:02d}" for i in range(12)]


def test_pending_requests_are_capped_per_target_and_per_requester_oldest_first(
    world: World, alice: FakeNode
) -> None:
    """Before: requests to one node were unbounded and every heartbeat and trust_list
    page loaded them all (2,000 cost 33 s of registry CPU). Now the newest
    MAX_PENDING_PER_TARGET stay, heartbeats push at most PENDING_PUSH_LIMIT of them, and
    trust_list reads one page from the database."""
    askers = [world.new_node() for _ in range(MAX_PENDING_PER_TARGET + 5)]
    for index, asker in enumerate(askers):
        world.register(asker, f"asker-{index:03d}")
        world.now += 0.001
        world.call(asker, "trust_request", peer=alice.b64, message=f"m{index}")
    world.messages(alice)
    world.register(alice, "alice")
    assert len(world.pushes(alice)) == PENDING_PUSH_LIMIT
    listed = paged_trust_list(world, alice)
    expected = [f"asker-{index:03d}" for index in range(5, len(askers))]
    assert [entry["node"]["hostname"] for entry in listed["incoming"]] == expected
    assert listed["trusted"] == listed["outgoing"] == []

    # One node asking many: its oldest requests expire past MAX_PENDING_PER_REQUESTER.
    for asker in askers[: MAX_PENDING_PER_REQUESTER + 3]:
        world.now += 0.001
        world.call(alice, "trust_request", peer=asker.b64, message="")
    # A crossing request trusts at once: the first five askers' requests had expired.
    listed = paged_trust_list(world, alice)
    assert len(listed["outgoing"]) == 5 and len(listed["trusted"]) == MAX_PENDING_PER_REQUESTER - 2
    assert [n["hostname"] for n in listed["outgoing"]] == [f"asker-{i:03d}" for i in range(5)]
    strangers = [world.new_node() for _ in range(MAX_PENDING_PER_REQUESTER)]
    for index, stranger in enumerate(strangers):
        world.register(stranger, f"stranger-{index:03d}")
        world.now += 0.1
        world.call(alice, "trust_request", peer=stranger.b64, message="")
    outgoing = [n["hostname"] for n in paged_trust_list(world, alice)["outgoing"]]
    assert outgoing == [f"stranger-{i:03d}" for i in range(MAX_PENDING_PER_REQUESTER)]


def paged_trust_list(world: World, node: FakeNode) -> dict[str, list[Any]]:
    """Every page of the node's trust_list, joined; each page fits one datagram."""
    joined: dict[str, list[Any]] = {"trusted": [], "incoming": [], "outgoing": []}
    offset: int | None = 0
    while offset is not None:
        reply = world.call(node, "trust_list", offset=offset)
        for name, entries in joined.items():
            entries += reply[name]
        offset = reply.get("next_offset")
    return joined


# -- punching ----------------------------------------------------------------------


def test_connect_sends_both_sides_each_others_candidates_only_when_trusted(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    refused = world.call(alice, "connect", peer=bob.b64)
    assert (refused["ok"], refused["code"]) == (False, "not_trusted")
    assert world.pushes(bob) == []
    trust(world, alice, bob)
    assert world.call(alice, "connect", peer=bob.b64)["ok"]
    [to_alice] = world.pushes(alice)
    [to_bob] = world.pushes(bob)
    assert to_alice["op"] == to_bob["op"] == "punch"
    assert to_alice["node"]["hostname"] == "bob"
    assert to_alice["candidates"] == [f"{bob.endpoint[0]}:{bob.endpoint[1]}"]
    assert to_bob["candidates"] == [f"{alice.endpoint[0]}:{alice.endpoint[1]}", "10.0.0.5:51820"]


def test_connect_to_an_offline_peer_is_refused(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    trust(world, alice, bob)
    world.now += ONLINE_WINDOW_S + 1
    world.register(alice, "alice")
    assert world.call(alice, "connect", peer=bob.b64)["code"] == "peer_offline"
    assert world.pushes(bob) == []


def test_no_reply_ever_reveals_an_endpoint_to_an_untrusted_node(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    world.call(bob, "trust_request", peer=alice.b64, message="")
    seen = [
        world.call(bob, "lookup", query="alice"),
        world.call(bob, "trust_list"),
        world.call(bob, "connect", peer=alice.b64),
        *world.pushes(bob),
    ]
    assert alice.endpoint[0] not in repr(seen) and "10.0.0.5" not in repr(seen)


# -- relay -------------------------------------------------------------------------


def test_relay_forwards_between_trusting_nodes_from_registered_endpoints(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), alice.endpoint)
    assert world.core.counters["relay_not_trusted"] == 1
    assert bob.endpoint not in world.inbox

    trust(world, alice, bob)
    world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), alice.endpoint)
    [forwarded] = world.inbox.pop(bob.endpoint)
    assert unpack_relay(forwarded) == (alice.key, WIREGUARD_DATAGRAM)
    assert world.core.counters["relayed_packets"] == 1

    world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), ("198.18.7.7", alice.endpoint[1]))
    assert world.core.counters["relay_unknown_source"] == 1
    world.now += ONLINE_WINDOW_S + 1
    world.register(alice, "alice")
    world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), alice.endpoint)
    assert world.core.counters["relay_offline"] == 1
    assert bob.endpoint not in world.inbox


def test_the_relay_asks_the_database_once_per_pair_and_forgets_at_an_untrust(
    world: World, alice: FakeNode, bob: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust(world, alice, bob)
    asked: list[tuple[bytes, bytes]] = []
    is_trusted = world.store.is_trusted
    monkeypatch.setattr(
        world.store, "is_trusted", lambda a, b: asked.append((a, b)) or is_trusted(a, b)
    )
    for _ in range(50):
        world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), alice.endpoint)
        world.deliver(pack_relay(alice.key, WIREGUARD_DATAGRAM), bob.endpoint)
    assert world.core.counters["relayed_packets"] == 100
    assert len(asked) == 1, "no query per packet"
    for node in (alice, bob):
        world.inbox.pop(node.endpoint)
    world.call(bob, "untrust", peer=alice.b64)
    world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), alice.endpoint)
    assert world.core.counters["relay_not_trusted"] == 1, "an untrust is felt at once"
    world.now += TRUST_CACHE_S
    world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), alice.endpoint)
    assert len(asked) == 3, "asked again after the untrust, and once the answer aged"


def test_a_relay_message_from_an_unknown_address_gets_a_four_byte_notice(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    """A node whose NAT mapping changed learns it from its next relayed packet (and
    registers again) instead of at its next heartbeat; the notice is smaller than what
    came in and limited per address like every unproven answer."""
    trust(world, alice, bob)
    moved = ("198.18.99.1", alice.endpoint[1])  # its NAT now has another address
    datagram = pack_relay(bob.key, WIREGUARD_DATAGRAM)
    for _ in range(UNPROVEN_BURST + 10):
        world.deliver(datagram, moved)
    notices = world.inbox.pop(moved)
    assert notices == [RELAY_SOURCE_UNKNOWN] * UNPROVEN_BURST
    assert len(RELAY_SOURCE_UNKNOWN) < len(datagram)
    assert bob.endpoint not in world.inbox


def test_relay_keeps_working_across_a_registry_restart(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    trust(world, alice, bob)
    world.restart()
    world.deliver(pack_relay(alice.key, WIREGUARD_DATAGRAM), bob.endpoint)
    [forwarded] = world.inbox.pop(alice.endpoint)
    assert unpack_relay(forwarded) == (bob.key, WIREGUARD_DATAGRAM)


def test_relay_bandwidth_is_bounded_per_source(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    trust(world, alice, bob)
    big = pack_relay(bob.key, bytes(60_000))
    sent = int(RELAY_BURST_BYTES // len(big)) + 100
    for _ in range(sent):
        world.deliver(big, alice.endpoint)
    forwarded = len(world.inbox.pop(bob.endpoint))
    assert forwarded == RELAY_BURST_BYTES // len(big)
    assert world.core.counters["relay_rate_limited"] == sent - forwarded
    world.now += 1
    world.deliver(big, alice.endpoint)
    assert len(world.inbox.pop(bob.endpoint)) == 1


# -- attacks from the open internet (issue 9) ----------------------------------------


def test_a_spoofed_register_sends_the_victim_fewer_bytes_than_the_spoofer_sent(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    """Before: a register from a spoofed source got its reply and up to 20 pushes
    (about 120x the bytes in). Now an unproven address gets one cookie reply, smaller
    than what came in, and never on more than a burst per address, whatever the port."""
    eve = world.new_node()
    world.register(eve, "eve")
    for asker in (alice, bob):
        world.call(asker, "trust_request", peer=eve.b64, message="x" * 200)
    victim = "198.18.50.50"
    sent = received = answers = 0
    for port in range(1, 2 * UNPROVEN_BURST):
        # eve's own key and a mac2 made with eve's cookie: valid everywhere but here.
        datagram = eve.seal("register", hostname="eve", tags=[], lan=[])
        world.deliver(datagram, (victim, port))
        sent += len(datagram)
    for (host, _), datagrams in world.inbox.items():
        if host == victim:
            received += sum(len(d) for d in datagrams)
            answers += len(datagrams)
            assert all(len(d) == COOKIE_REPLY_SIZE for d in datagrams)
    assert received < sent / 2
    assert answers == UNPROVEN_BURST
    record = world.store.node_by_key(eve.key)
    assert record is not None and record.endpoint == format_endpoint(eve.endpoint)


def test_a_spoofed_register_cannot_take_a_nodes_endpoint_or_relay_slot(
    world: World, alice: FakeNode, bob: FakeNode
) -> None:
    """Before: eve registering from alice's address took alice's relay slot, so what
    bob relayed to eve went to alice's address and what alice relayed came from eve."""
    trust(world, alice, bob)
    eve = world.new_node()
    world.register(eve, "eve")
    trust(world, eve, bob)
    world.deliver(eve.seal("register", hostname="eve", tags=[], lan=[]), alice.endpoint)
    [cookie_reply] = world.inbox.pop(alice.endpoint)
    assert cookie_reply[0] == REGISTRY_COOKIE_TYPE
    world.deliver(pack_relay(bob.key, WIREGUARD_DATAGRAM), alice.endpoint)
    [forwarded] = world.inbox.pop(bob.endpoint)
    assert unpack_relay(forwarded)[0] == alice.key
    world.deliver(pack_relay(eve.key, WIREGUARD_DATAGRAM), bob.endpoint)
    assert list(world.inbox) == [eve.endpoint]


def test_junk_from_fresh_keys_costs_a_hash_not_a_key_exchange(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each 0x50 from a new key cost an X25519 and a query (~97 us). Now a
    message without our mac1 is dropped after one keyed hash, and one without a cookie
    gets a cookie reply; neither costs the registry an X25519."""
    exchanges: list[bytes] = []

    def counting_dh(private: PrivateKey, public: bytes) -> bytes:
        if public_key(private) == world.core.public_key:
            exchanges.append(public)
        return dh(private, public)

    monkeypatch.setattr(wire, "dh", counting_dh)
    for number in range(500):
        fresh = FakeNode(world.core.public_key, ("198.18.60.1", 1), world.clock)
        datagram = bytearray(fresh.seal("register", hostname=f"junk{number}"))
        world.deliver(bytes(datagram), (f"198.18.{61 + number % 100}.{number % 250 + 1}", 9))
        datagram[-REQUEST_MACS_SIZE - 1] ^= 1
        world.deliver(bytes(datagram), ("198.18.60.1", 1))
    assert exchanges == []
    assert world.core.counters["bad_mac1"] == 500
    assert world.core.counters["cookie_replies"] == 500
    # The count is real: a node that proves its address costs exactly one.
    node = world.new_node()
    world.register(node, "proven")
    assert exchanges == [node.key]


def test_fresh_keys_from_one_proven_address_are_rate_limited(world: World) -> None:
    """Someone with a real address can prove it and then try many keys: each costs an
    X25519, so new keys from one address get NEW_KEY_BURST, then NEW_KEY_RATE_PER_S."""
    endpoint = ("198.18.70.1", 5000)
    answered = 0
    for number in range(int(NEW_KEY_BURST) + 20):
        node = FakeNode(world.core.public_key, (endpoint[0], 5000 + number), world.clock)
        world.nodes[node.endpoint] = node
        world.deliver(node.seal("lookup", query="x"), node.endpoint)
        answered += len(world.inbox.pop(node.endpoint, []))
    assert answered == NEW_KEY_BURST
    assert world.core.counters["new_key_rate_limited"] == 20


# -- hostile input -----------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(data=st.binary(max_size=1500))
def test_garbage_is_dropped_and_counted_never_raised(world: World, data: bytes) -> None:
    before = sum(world.core.counters.values())
    world.now += 1
    world.deliver(data, ("198.18.66.66", 6666))
    assert sum(world.core.counters.values()) == before + 1 or data == KEY_REQUEST


def test_truncated_and_tampered_messages_are_counted(world: World, alice: FakeNode) -> None:
    sealed = alice.seal("lookup", query="alice")
    tag_end = -REQUEST_MACS_SIZE - 1
    tampered = sealed[:tag_end] + bytes((sealed[tag_end] ^ 1,)) + sealed[tag_end + 1 :]
    world.deliver(sealed[:50], alice.endpoint)
    world.deliver(tampered, alice.endpoint)
    world.deliver(remac(alice, tampered, world.now), alice.endpoint)
    world.deliver(sealed + bytes(2000), alice.endpoint)
    counters = world.core.counters
    assert (counters["malformed"], counters["bad_mac1"]) == (1, 1)
    assert (counters["decrypt_failed"], counters["too_large"]) == (1, 1)
    assert alice.endpoint not in world.inbox


def test_control_messages_are_rate_limited_per_source(world: World, alice: FakeNode) -> None:
    for _ in range(int(CONTROL_BURST) + 10):
        world.deliver(alice.seal("lookup", query="alice"), alice.endpoint)
    # The registration took one token at the same instant.
    assert world.core.counters["rate_limited"] == 11
    assert len(world.inbox.pop(alice.endpoint)) == CONTROL_BURST - 1
    world.now += 1
    world.deliver(alice.seal("lookup", query="alice"), alice.endpoint)
    assert len(world.inbox.pop(alice.endpoint)) == 1


def test_token_buckets_refill_over_time_and_forget_the_least_recent_source() -> None:
    buckets = TokenBuckets(rate_per_s=2.0, burst=2.0, max_sources=2)
    assert [buckets.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.allow("a", 0.5) and not buckets.allow("a", 0.5)
    buckets.allow("b", 0.5)
    buckets.allow("c", 0.5)
    # "a" was forgotten, so it starts again with a full bucket.
    assert buckets.allow("a", 0.5) and buckets.allow("a", 0.5)


def test_hints_name_commands_the_cli_has() -> None:
    """Issue 9: two hints named a `pilotif lookup` command that does not exist."""
    handlers = (server, requests, register, trust_ops, lookups, directory)
    text = "".join(Path(module.__file__ or "").read_text() for module in handlers)
    named = set(re.findall(r"pilotif ([a-z-]+)", text))
    assert named, "the registry names no commands in its hints"
    assert named <= set(cli.commands), named - set(cli.commands)
