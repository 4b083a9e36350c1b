"""The node core and a registry with replicas: a node registered at replica "a" moves to
another replica when told that "a" died, and only then (a late notice about another
replica's death, e.g. "b" that it never used, leaves it where it is). A node core and a
registry core (SQLite) in memory, no sockets."""

from ipaddress import IPv4Network
from pathlib import Path

from pilotif.node.core import NodeCore, NodeOptions
from pilotif.node.events import RegistrySwitched
from pilotif.node.trust import TrustFiles
from pilotif.overlay.crypto import generate_private_key
from pilotif.overlay.device import Device
from pilotif.overlay.events import Endpoint
from pilotif.registry.server import RegistryCore
from pilotif.registry.store import Store
from pilotif.registry.wire import ControlChannel

REPLICA_A: Endpoint = ("198.18.0.1", 7946)
REPLICA_B: Endpoint = ("198.18.0.2", 7946)
NODE: Endpoint = ("198.18.0.11", 40000)
START = 1000.0
NOTICE_COUNTER = 10**9
"""Far above anything the replica's channel sealed before: the notice is fresh."""


class Joined:
    """Node "alpha" registered at replica "a" (whose replies say so)."""

    def __init__(self, tmp: Path) -> None:
        self.registry_key = generate_private_key()
        store = Store(tmp / "registry.db", IPv4Network("100.64.0.0/10"))
        self.registry = RegistryCore(self.registry_key, store, first_counter=1, replica="a")
        state = tmp / "alpha"
        state.mkdir()
        self.device = Device(generate_private_key(), mtu=1420, wall_offset_s=0.0)
        self.core = NodeCore(
            NodeOptions(REPLICA_A, "alpha", [], None, None),
            self.device,
            TrustFiles(state).load(),
            registry=REPLICA_A,
            registry_replicas=(REPLICA_B,),
            lan_endpoints=[],
            first_counter=1,
        )
        self.now = START
        self.core.start(self.now)
        self.exchange()
        assert self.core.replica == "a"

    def exchange(self) -> None:
        """Carry datagrams between the node and replica "a" until both are quiet."""
        for _ in range(20):
            sent = self.core.datagrams_to_send()
            if not sent:
                return
            for data, destination in sent:
                if destination != REPLICA_A:
                    continue
                for answer, _ in self.registry.handle_datagram(data, NODE, self.now):
                    self.core.receive_control(answer, self.now, REPLICA_A)
        raise AssertionError("the node and the registry never stopped talking")

    def notice_from_b(self, gone: str) -> None:
        """Replica "b" (same key: replicas share it) says replica `gone` died."""
        channel = ControlChannel(self.registry_key, self.device.public_key, local_is_registry=True)
        notice = {"op": "use_replica", "gone": gone, "session": self.core.link.session}
        self.core.receive_control(channel.seal(notice, NOTICE_COUNTER), self.now, REPLICA_B)


def switches(joined: Joined) -> list[RegistrySwitched]:
    return [e for e in joined.core.events if isinstance(e, RegistrySwitched)]


def test_a_node_told_its_replica_died_moves_to_the_one_that_told_it(tmp_path: Path) -> None:
    joined = Joined(tmp_path)
    joined.notice_from_b("a")
    assert joined.core.link.endpoint == REPLICA_B
    assert [(s.registry, s.previous) for s in switches(joined)] == [
        ("198.18.0.2:7946", "198.18.0.1:7946")
    ]
    assert any(destination == REPLICA_B for _, destination in joined.core.datagrams_to_send())


def test_a_notice_about_another_replica_leaves_the_node_where_it_is(tmp_path: Path) -> None:
    joined = Joined(tmp_path)
    joined.core.events.clear()
    joined.notice_from_b("b")
    assert joined.core.link.endpoint == REPLICA_A
    assert not switches(joined)
