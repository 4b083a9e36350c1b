"""A simulated network for the control plane's unit tests: node cores (each with its
overlay device), the registry core, and NAT routers between them, all in memory on one
fake clock. No sockets, no root, deterministic for a given seed.

With `relays`, standalone relays (relay cores) stand on the internet too, and the
registry names them.

NAT routers model Linux conntrack + masquerade closely enough for hole punching:
- mapping: a LAN socket keeps its port towards each destination when that (public
  port, destination) pair is free (cone-like), or gets a random port per destination
  (symmetric);
- filtering: an inbound datagram passes only for a (public port, remote) pair the LAN
  side sent to (endpoint-dependent), or for any remote once the port is mapped
  (endpoint-independent, "full cone");
- `accepts_to_self`: a router that does not drop inbound datagrams addressed to itself
  keeps a conntrack entry for each, so its LAN side cannot map that (port, remote) pair
  until the entry expires (the collision that issue 9 describes).
Entries expire after UDP_TIMEOUT_S without traffic.
- IPv6 (a node made with `ipv6`): the registry answers at REGISTRY_V6 too. A node with a
  global address sits behind a stateful firewall (a Nat that keeps its address and port:
  only the remotes it sent to get in); one behind NAT66 has a ULA and a cone Nat to a
  global address. Datagrams to or from an address in `Network.blackholes` are lost, and
  so are those from one address to another in `Network.one_way_blocks`.
- `forwards`: ports the router forwards to a LAN endpoint (a NAT-PMP, PCP or UPnP
  mapping: a DNAT rule): an inbound datagram to one makes a flow that the LAN side's
  answers leave by. When that LAN endpoint already sends to the same remote from
  another public port, Linux keeps both flows by giving the forwarded one another
  source port as the LAN side sees it (an alias of the remote, undone on the way out).
"""

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network
from pathlib import Path

from pilotif.control.relay_info import RelayInfo
from pilotif.control.wire import format_endpoint
from pilotif.net.relay_frame import RelayFraming
from pilotif.node.core import NodeCore
from pilotif.node.events import NodeEvent, RelaysChanged
from pilotif.node.registration import HEARTBEAT_JITTER, NodeOptions
from pilotif.node.registry_link import REGISTER_INTERVAL_S, REQUEST_ATTEMPTS, REQUEST_RETRY_S
from pilotif.node.trust import TrustRecord
from pilotif.packet.checksum import internet_checksum
from pilotif.packet.icmp import echo_request_packet
from pilotif.registry.core import RegistryCore
from pilotif.registry.recall import RECALL_EVERY_S
from pilotif.registry.store import Store
from pilotif.relay.core import RelayCore
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint, Event, RelayEndpoint
from pilotif.wg.keys import encode_key

REGISTRY: Endpoint = ("198.18.0.1", 7946)
REGISTRY_V6: Endpoint = ("3fff::1", 7946)
"""The registry's IPv6 address (3fff::/20: the documentation prefix that `ipaddress` takes
for global, see pilotif_lab.dual_stack)."""
RELAY_PORT = 7947
NETWORK = "100.64.0.0/10"
NODE_PORT = 51820
UDP_TIMEOUT_S = 30.0
LOST_WITHIN_S = (
    REGISTER_INTERVAL_S * (1 + HEARTBEAT_JITTER) + REQUEST_ATTEMPTS * REQUEST_RETRY_S + 2
)
"""How long a node may take to find a silent registry lost: its next heartbeat (jittered),
then that request's attempts."""
OWN_ROUTER_HOPS = 2
"""A hop limit this high leaves the sender's own router (which forwards and maps it)."""
ROUTER_TO_ROUTER_HOPS = 3
"""A hop limit this high crosses the internet router to the far router."""
START_S = 1_000_000.0
LINK_DELAY_S = 0.002
_PLAIN_IPV4 = 0x45
_ICMP = 1
_ECHO_REQUEST = 8
_IPV4_HEADER_BYTES = 20
_ICMP_MIN_BYTES = 28
"""One hop's delay (LAN to router, router to router or registry)."""


class Mapping(StrEnum):
    CONE = "cone"
    SYMMETRIC = "symmetric"


class Filtering(StrEnum):
    ENDPOINT_DEPENDENT = "endpoint-dependent"
    ENDPOINT_INDEPENDENT = "endpoint-independent"


class Ipv6(StrEnum):
    """How a node is on IPv6 (see the module docstring)."""

    FIREWALL = "global address behind a stateful firewall"
    NAT66 = "ULA behind a NAT66"


@dataclass
class Nat:
    """One NAT router; see the module docstring."""

    wan: str
    mapping: Mapping = Mapping.CONE
    filtering: Filtering = Filtering.ENDPOINT_DEPENDENT
    accepts_to_self: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    flows: dict[tuple[int, Endpoint], tuple[Endpoint, float]] = field(default_factory=dict)
    """(public port, remote) -> (LAN endpoint, expiry)."""
    own: dict[tuple[int, Endpoint], float] = field(default_factory=dict)
    """(public port, remote) -> expiry of an entry for a datagram taken by the router."""
    collisions: int = 0
    forwards: dict[int, Endpoint] = field(default_factory=dict)
    """Public port -> LAN endpoint (see the module docstring)."""
    aliases: dict[Endpoint, Endpoint] = field(default_factory=dict)
    """The source the LAN side sees -> the remote it stands for (forwarded flows)."""

    def flush(self) -> None:
        """Forget every mapping (`conntrack -F`, a router restart)."""
        self.flows.clear()
        self.own.clear()

    def _expire(self, now: float) -> None:
        self.flows = {k: v for k, v in self.flows.items() if v[1] > now}
        self.own = {k: v for k, v in self.own.items() if v > now}

    def outbound(self, lan: Endpoint, remote: Endpoint, now: float) -> tuple[Endpoint, Endpoint]:
        """The public source of a datagram from `lan` to `remote`, and where it goes (the
        remote itself, or the one an alias stands for)."""
        self._expire(now)
        for (port, to), (inside, _) in self.flows.items():
            if to == remote and inside == lan:
                self.flows[(port, to)] = (lan, now + UDP_TIMEOUT_S)
                return (self.wan, port), self.aliases.get(remote, remote)
        port = lan[1] if self.mapping == Mapping.CONE else self.rng.randrange(20000, 60000)
        while (port, remote) in self.flows or (port, remote) in self.own:
            if (port, remote) in self.own:
                self.collisions += 1
            port = self.rng.randrange(20000, 60000)
        self.flows[(port, remote)] = (lan, now + UDP_TIMEOUT_S)
        return (self.wan, port), remote

    def inbound(self, port: int, remote: Endpoint, now: float) -> tuple[Endpoint, Endpoint] | None:
        """Where a datagram from `remote` to our public `port` goes on the LAN, and the
        source the LAN side sees (None: dropped, or taken by the router)."""
        self._expire(now)
        seen = next((a for a, real in self.aliases.items() if real == remote), remote)
        flow = self.flows.get((port, seen))
        if flow is None and self.filtering == Filtering.ENDPOINT_INDEPENDENT:
            flow = next((v for (p, _), v in self.flows.items() if p == port), None)
        if flow is not None:
            self.flows[(port, seen)] = (flow[0], now + UDP_TIMEOUT_S)
            return flow[0], seen
        forward = self.forwards.get(port)
        if forward is not None:
            flows = self.flows.items()
            if any(to == remote and inside == forward for (_, to), (inside, _) in flows):
                seen = (remote[0], self.rng.randrange(20000, 60000))
                self.aliases[seen] = remote
            self.flows[(port, seen)] = (forward, now + UDP_TIMEOUT_S)
            return forward, seen
        if self.accepts_to_self:
            self.own[(port, remote)] = now + UDP_TIMEOUT_S
        return None


def _echo_reply(packet: bytes) -> bytes | None:
    """The echo reply a kernel sends to an IPv4 ICMP echo request (None for anything else)."""
    if len(packet) < _ICMP_MIN_BYTES or packet[0] != _PLAIN_IPV4 or packet[9] != _ICMP:
        return None
    if packet[_IPV4_HEADER_BYTES] != _ECHO_REQUEST:
        return None
    header = bytearray(packet[:_IPV4_HEADER_BYTES])
    header[12:16], header[16:20] = packet[16:20], packet[12:16]
    header[10:12] = bytes(2)
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    message = bytearray(packet[_IPV4_HEADER_BYTES:])
    message[0] = 0
    message[2:4] = bytes(2)
    message[2:4] = internet_checksum(message).to_bytes(2, "big")
    return bytes(header + message)


class SimNode:
    """A node core with its device on a LAN behind `nat` (None: on the internet)."""

    def __init__(
        self,
        net: "Network",
        hostname: str,
        lan_ip: str,
        nat: Nat | None,
        *,
        auto_approve: str | None = None,
        tags: tuple[str, ...] = (),
        ipv6: tuple[str, Nat] | None = None,
    ) -> None:
        self.net = net
        self.hostname = hostname
        self.address: Endpoint = (lan_ip, NODE_PORT)
        self.nat = nat
        self.address6: Endpoint | None = (ipv6[0], NODE_PORT) if ipv6 else None
        """Its IPv6 address (None: IPv4 only), behind `nat6`."""
        self.nat6 = ipv6[1] if ipv6 else None
        self.device = Device(generate_private_key(), mtu=1420, wall_offset_s=START_S)
        self.options = NodeOptions(REGISTRY, hostname, list(tags), None, auto_approve)
        self.trust = TrustRecord(registry_key=net.registry.public_key)
        self.core = self._new_core(first_counter=1)
        self.framing = RelayFraming((REGISTRY, REGISTRY_V6))
        self.control_sent = 0
        """Datagrams sent to the registry's address."""
        self.sent_to_registry: list[tuple[float, bytes]] | None = None
        """When a list: (when, datagram) for each datagram sent to the registry's address."""
        self.answers_pings = False
        """Whether its "kernel" answers ICMP echo requests that arrive through the tunnel."""
        self.events: list[NodeEvent] = []
        self.device_events: list[Event] = []
        """Device events the node's decisions caused, reported to it at the next flush."""
        self.received: list[bytes] = []
        """IP packets the device handed to the TUN."""

    @property
    def key(self) -> str:
        return encode_key(self.device.public_key)

    def flush(self) -> None:
        out = self.device.take_output()
        events, self.device_events = self.device_events + out.events, []
        self.core.device_reported(events, self.net.now)
        for data, to in self.core.datagrams_to_send():
            if to == REGISTRY:
                self.control_sent += 1
                if self.sent_to_registry is not None:
                    self.sent_to_registry.append((self.net.now, bytes(data)))
            self.net.send(self, data, to)
        for opener in self.core.take_openers():
            self.net.send(self, opener.datagram, opener.endpoint, hops=opener.hops)
        after = self.device.take_output()
        self.device_events = after.events
        for data, endpoint in out.datagrams + after.datagrams:
            if isinstance(endpoint, RelayEndpoint):
                wrapped = self.framing.wrap(data, endpoint)
                assert wrapped is not None
                self.net.send(self, wrapped[0], wrapped[1])
            else:
                self.net.send(self, bytes(data), endpoint)
        arrived = [bytes(p) for p in out.packets + after.packets]
        self.received += arrived
        if self.answers_pings:
            replies = [r for r in map(_echo_reply, arrived) if r is not None]
            if replies:
                self.device.send(replies, self.net.now)
                self.flush()
        for event in self.core.events:
            if isinstance(event, RelaysChanged):
                relays = self.core.relays
                self.framing.use_relays(relays.home_endpoint, relays.endpoints())
        self.events += self.core.events
        self.core.events = []

    def _new_core(self, *, first_counter: int) -> NodeCore:
        lan = [format_endpoint(self.address)]
        if self.address6 is not None:
            lan.append(format_endpoint(self.address6))
        return NodeCore(
            self.options,
            self.device,
            self.trust,
            registry=REGISTRY,
            registry_replicas=(REGISTRY_V6,) if self.address6 is not None else (),
            lan_endpoints=lan,
            first_counter=first_counter,
        )

    def restart(self, port: int) -> None:
        """`pilotif down`, then `up` on another UDP port (as `up` without --listen-port
        gets): a new device and core with the same key and the trust record it kept."""
        counter = self.core.link.counter
        self.address = (self.address[0], port)
        if self.address6 is not None:
            self.address6 = (self.address6[0], port)
        self.device = Device(self.device.local.private_key, mtu=1420, wall_offset_s=START_S)
        self.core = self._new_core(first_counter=counter + 1)
        self.core.start(self.net.now)
        self.flush()

    def deliver(self, data: bytes, source: Endpoint) -> None:
        now = self.net.now
        if self.framing.is_registry(source):
            sorted_ = self.framing.split_registry(memoryview(data), 0, source)
            for control in sorted_.control:
                self.core.receive_control(control, now, source)
            for inner, endpoint in sorted_.wireguard:
                self.device.receive((inner,), endpoint, now)
        elif not self.framing.is_opener(memoryview(data)):
            self.device.receive((data,), source, now)
        self.flush()

    def timer(self) -> float | None:
        deadlines = [d for d in (self.core.get_timer(), self.device.get_timer()) if d]
        return min(deadlines, default=None)

    def fire(self) -> None:
        now = self.net.now
        self.device.handle_timer(now)
        self.core.handle_timer(now)
        self.flush()

    def call(self, op: str, **fields: object) -> int:
        request_id = self.core.call(op, dict(fields), self.net.now)
        self.flush()
        return request_id

    def ping(self, other: "SimNode", sequence: int = 1) -> None:
        """Send an ICMP echo to `other`'s overlay address, as a program would."""
        assert self.core.ipv4 is not None and other.core.ipv4 is not None
        packet = echo_request_packet(self.core.ipv4, other.core.ipv4, sequence)
        self.device.send((packet,), self.net.now)
        self.flush()

    def path_to(self, other: "SimNode") -> str:
        return self.core.paths.path_of(other.device.public_key)


@dataclass(order=True)
class _InFlight:
    at: float
    seq: int
    data: bytes = field(compare=False)
    source: Endpoint = field(compare=False)
    to: Endpoint = field(compare=False)


class Network:
    """The registry on the internet, and nodes added with `node`."""

    def __init__(self, tmp: Path, *, seed: int = 1, loss: float = 0.0, relays: int = 0) -> None:
        self.now = START_S
        self.rng = random.Random(seed)
        self.loss = loss
        self._registry_key = generate_private_key()
        self._store = Store(tmp / "registry.db", IPv4Network(NETWORK))
        self.registry_store = self._store
        """What the registry keeps (for tests that look at a node's record)."""
        self._relay_keys = [generate_private_key() for _ in range(relays)]
        self.relay_infos = tuple(
            RelayInfo(public_key(private), (f"198.18.1.{index + 1}", RELAY_PORT))
            for index, private in enumerate(self._relay_keys)
        )
        self.relays: dict[Endpoint, RelayCore] = {}
        for index in range(relays):
            self.restart_relay(index)
        self.relays_down: set[Endpoint] = set()
        """Relays whose process is stopped: what reaches them is lost."""
        self.registry = RegistryCore(
            self._registry_key, self._store, first_counter=1, relays=self.relay_infos
        )
        self.nodes: list[SimNode] = []
        self.nats: dict[str, Nat] = {}
        self._queue: list[_InFlight] = []
        self._seq = itertools.count()
        self._wan = itertools.count(11)
        self.delays: dict[tuple[str, str], float] = {}
        """Extra delay of datagrams from one public address to another."""
        self.registry_down = False
        """While True, whatever reaches the registry is lost (its process is stopped)."""
        self.recall_s: float | None = None
        """When the registry next tells the nodes it knew that it is back (its service
        asks every RECALL_EVERY_S while the core has some to tell)."""
        self.dead_by_hops = 0
        """Datagrams whose hop limit ran out between the routers."""
        self.blackholes: set[str] = set()
        """Addresses whose datagrams, to them or from them, are lost."""
        self.one_way_blocks: set[tuple[str, str]] = set()
        """(from, to) public addresses between which datagrams are lost that way only."""

    def node(
        self,
        hostname: str,
        *,
        mapping: Mapping = Mapping.CONE,
        filtering: Filtering = Filtering.ENDPOINT_DEPENDENT,
        accepts_to_self: bool = False,
        auto_approve: str | None = None,
        ipv6: Ipv6 | None = None,
    ) -> SimNode:
        index = next(self._wan)
        nat = Nat(
            f"198.18.0.{index}",
            mapping,
            filtering,
            accepts_to_self,
            random.Random(self.rng.random()),
        )
        self.nats[nat.wan] = nat
        v6 = None
        if ipv6 is not None:
            inside = f"3fff:0:0:{index:x}::2" if ipv6 == Ipv6.FIREWALL else f"fd00:{index:x}::2"
            wan = f"3fff:0:0:{index:x}::2" if ipv6 == Ipv6.FIREWALL else f"3fff::{index:x}"
            v6 = (inside, Nat(wan, rng=random.Random(self.rng.random())))
            self.nats[wan] = v6[1]
        node = SimNode(self, hostname, f"198.19.{index}.2", nat, auto_approve=auto_approve, ipv6=v6)
        self.nodes.append(node)
        return node

    # -- datagrams -------------------------------------------------------------------

    def send(self, sender: SimNode, data: bytes, to: Endpoint, hops: int | None = None) -> None:
        """A datagram from a node, through its NAT, as far as `hops` takes it (see the
        module docstring; None: the system's default, far enough)."""
        source, nat = sender.address, sender.nat
        if ":" in to[0]:
            if sender.address6 is None:
                return
            source, nat = sender.address6, sender.nat6
        if nat is not None:
            if hops is not None and hops < OWN_ROUTER_HOPS:
                return
            source, to = nat.outbound(source, to, self.now)
        if hops is not None and hops < ROUTER_TO_ROUTER_HOPS:
            self.dead_by_hops += 1
            return
        self._transmit(data, source, to)

    def _transmit(self, data: bytes, source: Endpoint, to: Endpoint) -> None:
        if self.loss and self.rng.random() < self.loss:
            return
        if source[0] in self.blackholes or to[0] in self.blackholes:
            return
        if (source[0], to[0]) in self.one_way_blocks:
            return
        delay = 2 * LINK_DELAY_S + self.delays.get((source[0], to[0]), 0.0)
        item = _InFlight(self.now + delay, next(self._seq), data, source, to)
        heapq.heappush(self._queue, item)

    def _arrive(self, item: _InFlight) -> None:
        relay = self.relays.get(item.to)
        if relay is not None:
            if item.to not in self.relays_down:
                for data, to in relay.handle_datagram(item.data, item.source, self.now):
                    self._transmit(data, item.to, to)
            return
        if item.to in (REGISTRY, REGISTRY_V6):
            if self.registry_down:
                return
            for data, to in self.registry.handle_datagram(item.data, item.source, self.now):
                self._transmit(data, item.to, to)
            return
        nat = self.nats.get(item.to[0])
        if nat is None:
            return
        arrived = nat.inbound(item.to[1], item.source, self.now)
        if arrived is None:
            return
        inside, seen = arrived
        for node in self.nodes:
            if inside in (node.address, node.address6):
                node.deliver(item.data, seen)

    # -- time ------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        """Let `seconds` pass, delivering datagrams and firing timers in time order."""
        end = self.now + seconds
        while True:
            timers = [(t, i) for i, n in enumerate(self.nodes) if (t := n.timer()) is not None]
            next_timer = min(timers, default=None)
            next_datagram = self._queue[0].at if self._queue else None
            candidates = [t for t in (next_timer and next_timer[0], next_datagram) if t]
            if self.recall_s is not None:
                candidates.append(self.recall_s)
            if not candidates or min(candidates) > end:
                self.now = end
                return
            self.now = max(self.now, min(candidates))
            if next_datagram is not None and next_datagram <= self.now:
                self._arrive(heapq.heappop(self._queue))
            elif self.recall_s is not None and self.recall_s <= self.now:
                self._recall()
            else:
                assert next_timer is not None
                self.nodes[next_timer[1]].fire()

    def _recall(self) -> None:
        """The registry's service tells the next nodes it knew that it is back (not
        while its process is stopped)."""
        if not self.registry_down:
            for data, to in self.registry.recall(self.now):
                self._transmit(data, REGISTRY, to)
        self.recall_s = self.now + RECALL_EVERY_S if self.registry.recalling else None

    def run_until(
        self, condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05
    ) -> float:
        """Run until `condition()` holds; the seconds it took (AssertionError after
        `timeout_s`)."""
        start = self.now
        while not condition():
            if self.now - start > timeout_s:
                raise AssertionError(f"not within {timeout_s} s")
            self.run(step_s)
        return self.now - start

    def up(self, *nodes: SimNode) -> None:
        """Start each node and wait until all have joined."""
        for node in nodes:
            node.core.start(self.now)
            node.flush()
        self.run_until(lambda: all(n.core.joined for n in nodes), 10.0)

    def renumber(self, nat: Nat, wan: str) -> None:
        """The router gets another WAN address (a new lease): its mappings go with the
        old one; nothing changes behind it."""
        del self.nats[nat.wan]
        nat.wan = wan
        nat.flush()
        self.nats[wan] = nat

    def restart_registry(self, *, new_key: bool = False) -> None:
        """A new registry process on the same key and database: what it kept in memory
        (endpoints aside, which the database holds) is gone. With `new_key` its key was
        lost and it made a new one."""
        if new_key:
            self._registry_key = generate_private_key()
        self.registry = RegistryCore(
            self._registry_key,
            self._store,
            first_counter=self.registry.counter + 1,
            relays=self.relay_infos,
        )
        self.recall_s = self.now if self.registry.recalling else None

    def restart_relay(self, index: int) -> None:
        """A new process of relay `index` (a new instance: it knows no node)."""
        info = self.relay_infos[index]
        previous = self.relays.get(info.endpoint)
        self.relays[info.endpoint] = RelayCore(
            self._relay_keys[index],
            public_key(self._registry_key),
            first_counter=previous.counter + 1 if previous is not None else 1,
        )

    def trust(self, asker: SimNode, approver: SimNode) -> None:
        """`asker` asks for trust and `approver` approves, as two users would."""
        asker.call("trust_request", peer=approver.key, message="sim")
        self.run(0.1)
        approver.call("trust_respond", peer=asker.key, approve=True)
