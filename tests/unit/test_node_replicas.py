"""The node core and a registry with replicas: a node registered at replica "a" moves to
another replica when told that "a" died, and only then (a late notice about another
replica's death, e.g. "b" that it never used, leaves it where it is). A node core and a
registry core (SQLite) in memory, no sockets."""

import select
import time
from ipaddress import IPv4Network
from pathlib import Path

from pilotif_lab.postgres import ThrowawayPostgres

from pilotif.control.wire import ControlChannel
from pilotif.node.core import NodeCore
from pilotif.node.events import RegistrySwitched
from pilotif.node.registration import NodeOptions
from pilotif.node.trust import TrustFiles
from pilotif.registry.core import RegistryCore
from pilotif.registry.replicas import PUSH_CHANNEL
from pilotif.registry.store import Store
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint
from tests.unit.netsim import NETWORK, REGISTRY, Network
from tests.unit.test_node_core import _trusting
from tests.unit.test_registry_replicas import (
    NOTIFY_WAIT_S,
    QUIET_S,
    forged_revocation,
    intruder_connection,
)

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
        assert self.core.registration.replica == "a"

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


def test_a_notify_forged_by_any_role_that_may_connect_leaves_the_peer_trusted(
    tmp_path: Path, postgres_server: ThrowawayPostgres
) -> None:
    """Issue 22: alpha and beta trust each other through replica "a" on PostgreSQL. A
    role that may only connect sends `NOTIFY pilotif_push` saying "beta revoked its
    trust in alpha": alpha keeps beta as a peer, its consent and its pin."""
    url = postgres_server.create_database("forged_notify")
    net = Network(tmp_path)
    net.registry.store.close()
    store = Store(url, IPv4Network(NETWORK))
    net.registry = RegistryCore(net._registry_key, store, first_counter=1, replica="a")
    listening = store.listen(PUSH_CHANNEL)
    assert listening is not None
    net.registry.keep_replicas(net.now)
    alpha, beta = net.node("alpha"), net.node("beta")
    _trusting(net, alpha, beta)
    record = store.node_by_key(beta.device.public_key)
    assert record is not None
    beta_seen = {
        "hostname": "beta",
        "public_key": beta.key,
        "ipv4": str(record.ipv4),
        "ipv6": str(record.ipv6),
        "tags": [],
        "online": True,
    }
    with intruder_connection(postgres_server, url) as intruder:
        intruder.execute(
            "SELECT pg_notify('pilotif_push', %s)", (forged_revocation("a", alpha.key, beta_seen),)
        )
    # The registry's loop: whatever the notifications lead it to send, until quiet.
    deadline = time.monotonic() + NOTIFY_WAIT_S
    while select.select([listening], [], [], QUIET_S)[0] and time.monotonic() < deadline:
        for datagram, destination in net.registry.handle_notifications(net.now):
            net._transmit(datagram, REGISTRY, destination)
    net.run(1.0)
    assert beta.device.public_key in alpha.core.peers
    assert beta.device.public_key in alpha.trust.consented
    assert alpha.trust.pins["beta"] == beta.device.public_key
    store.close()
