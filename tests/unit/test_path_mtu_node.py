"""The node's path MTU search (pilotif.node.path_mtu) over two real devices and a link
that silently drops datagrams above a size (a black hole: no ICMP), time passed in."""

from ipaddress import IPv4Address, IPv6Address

from conftest import NOW, Node, exchange
from test_device_batch import batch_receive, established_pair, take_bytes

from pilotif.node.events import EventSink, PathMtuChanged
from pilotif.node.path_mtu import (
    CONFIRM_S,
    LADDER,
    PROBE_TIMEOUT_S,
    RAISE_S,
    RETRY_S,
    PathMtuProber,
)
from pilotif.node.peers import TrustedPeer
from pilotif.wg.events import HandshakeCompleted, PathProbeAcked

TRANSPORT_OVERHEAD = 32
FULL = 1420


class Lab:
    """A (probing) and B over a link that carries datagrams up to `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.a, self.b = established_pair()
        self.limit = limit
        self.sink = EventSink()
        self.prober = PathMtuProber(self.a.device, self.sink)
        self.key = self.b.device.public_key
        self.now = NOW
        self.probes_sent: list[int] = []
        peer = TrustedPeer(
            hostname="beta",
            public_key=self.key,
            ipv4=IPv4Address("100.64.0.2"),
            ipv6=IPv6Address("fd00::2"),
            tags=[],
        )
        self.prober.add(peer, self.now)
        self.prober.device_reported([HandshakeCompleted(self.key, initiator=True)], self.now)
        self.carry()

    def _move(self, sender: Node, receiver: Node) -> None:
        datagrams = [d for d, _ in take_bytes(sender) if len(d) <= self.limit]
        if datagrams:
            batch_receive(receiver, datagrams, sender.endpoint, self.now)

    def carry(self) -> None:
        """Everything in flight both ways, then A's events to the prober."""
        sent = [len(d) for d, _ in take_bytes_keep(self.a)]
        self.probes_sent += [size - TRANSPORT_OVERHEAD for size in sent]
        self._move(self.a, self.b)
        self._move(self.b, self.a)
        events = [e for e in self.a.events if isinstance(e, PathProbeAcked)]
        self.a.events.clear()
        self.prober.device_reported(events, self.now)

    def wait(self, seconds: float) -> None:
        """Let time pass in steps of the prober's timer, carrying what it sends."""
        end = self.now + seconds
        while True:
            due = self.prober.next_timer()
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            self.prober.handle_timer(self.now)
            self.carry()
        self.now = end

    def changes(self) -> list[int]:
        return [e.mtu for e in self.sink.items if isinstance(e, PathMtuChanged)]


def take_bytes_keep(node: Node) -> list[tuple[bytes, object]]:
    """The node's queued datagrams, copied, left queued."""
    return [(bytes(d), e) for d, e in node.outgoing]


def test_a_clean_path_keeps_the_full_mtu_after_one_probe() -> None:
    lab = Lab(limit=1500)
    lab.wait(3 * PROBE_TIMEOUT_S)
    assert lab.probes_sent == [FULL]
    assert lab.prober.mtu_of(lab.key) == FULL
    assert lab.changes() == []


def test_a_black_hole_at_1280_bytes_is_found_within_a_few_seconds() -> None:
    # An IPv4 path of 1280 bytes: 1252 of UDP payload, so 1220 of plaintext.
    lab = Lab(limit=1280 - 28)
    lab.wait(4 * PROBE_TIMEOUT_S)
    assert lab.prober.mtu_of(lab.key) == 1220
    assert lab.a.device.peer(lab.key).mtu == 1220
    assert lab.changes() == [1220]
    assert lab.probes_sent[:2] == [FULL, FULL]
    assert sorted(lab.probes_sent[2:]) == sorted(LADDER)


def test_a_path_that_got_better_gets_the_full_mtu_back() -> None:
    lab = Lab(limit=1280 - 28)
    lab.wait(4 * PROBE_TIMEOUT_S)
    lab.limit = 1500
    lab.now += RAISE_S
    # Traffic kept the session fresh meanwhile: a new one now.
    lab.a.device.rehandshake(lab.key, lab.now)
    exchange(lab.a, lab.b, lab.now)
    lab.a.events.clear()
    lab.wait(2 * PROBE_TIMEOUT_S)
    assert lab.prober.mtu_of(lab.key) == FULL
    assert lab.changes() == [1220, FULL]


def test_a_peer_that_answers_nothing_keeps_its_mtu_and_is_tried_again() -> None:
    lab = Lab(limit=0)
    lab.wait(4 * PROBE_TIMEOUT_S)
    assert lab.prober.mtu_of(lab.key) == FULL
    sent = len(lab.probes_sent)
    lab.wait(RETRY_S + PROBE_TIMEOUT_S)
    assert len(lab.probes_sent) > sent
    assert lab.changes() == []


def test_a_new_endpoint_starts_a_new_search() -> None:
    lab = Lab(limit=1500)
    lab.wait(3 * PROBE_TIMEOUT_S)
    lab.limit = 1280 - 28
    lab.a.device.set_endpoint(lab.key, ("198.18.5.5", 51820))
    lab.wait(6 * PROBE_TIMEOUT_S)
    assert lab.prober.mtu_of(lab.key) == 1220


def test_an_answer_to_no_probe_of_ours_changes_nothing() -> None:
    lab = Lab(limit=1280 - 28)
    lab.prober.device_reported([PathProbeAcked(lab.key, 999, FULL)], lab.now)
    lab.prober.device_reported([PathProbeAcked(lab.key, 1, 1300)], lab.now)
    lab.wait(4 * PROBE_TIMEOUT_S)
    assert lab.prober.mtu_of(lab.key) == 1220


def test_a_black_hole_that_appears_on_the_same_endpoint_is_found_at_the_next_confirmation() -> None:
    """Before: a peer settled at the full MTU was never probed again on that endpoint,
    so a path that later dropped large packets (a tunnel on the way) went unnoticed."""
    lab = Lab(limit=1500)
    lab.wait(3 * PROBE_TIMEOUT_S)
    assert lab.probes_sent == [FULL]
    lab.limit = 1280 - 28
    lab.wait(CONFIRM_S + 4 * PROBE_TIMEOUT_S)
    assert lab.prober.mtu_of(lab.key) == 1220
    assert lab.changes() == [1220]


def test_a_clean_path_costs_one_probe_per_confirmation() -> None:
    lab = Lab(limit=1500)
    lab.wait(CONFIRM_S + 3 * PROBE_TIMEOUT_S)
    assert lab.probes_sent == [FULL, FULL]
    assert lab.changes() == []


def test_a_peer_without_a_session_is_searched_again_at_its_next_one() -> None:
    lab = Lab(limit=1500)
    lab.wait(3 * PROBE_TIMEOUT_S)
    state = lab.a.device.peer(lab.key)
    assert state is not None
    current, state.current = state.current, None
    lab.now += CONFIRM_S
    lab.prober.handle_timer(lab.now)
    # Nothing to probe, and nothing left due (the caller's timer would spin on it).
    due = lab.prober.next_timer()
    assert due is None or due > lab.now
    assert lab.probes_sent == [FULL]
    state.current = current
    lab.prober.device_reported([HandshakeCompleted(lab.key, initiator=True)], lab.now)
    lab.carry()
    assert lab.probes_sent == [FULL, FULL]
