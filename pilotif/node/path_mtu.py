"""Path MTU discovery for each trusted peer, sans-IO: how large a packet reaches it on
the path its traffic takes now, found by probing (datagram PLPMTUD, RFC 8899) and not
by ICMP from the path, which black holes drop; the device then keeps local programs
inside it (pilotif.wg.path_mtu).

A search starts when a peer gets a session and whenever its endpoint changes (a direct
path found or lost, a relay or a stream instead of UDP): one probe of the device's full
MTU, sent again after PROBE_TIMEOUT_S. Answered, the peer keeps the full MTU (a clean
path costs one probe). Twice unanswered, every size of the ladder goes at once and the
peer's MTU becomes the largest that is answered within PROBE_TIMEOUT_S; none answered
(the path is down, or the peer an older pilotif): nothing changes and the search runs
again after RETRY_S. A peer below the full MTU is probed at the full MTU again every
RAISE_S (a path that got better), one at the full MTU every CONFIRM_S (a path that got
worse on the same endpoint). A peer without a session is searched again at its next one.
Each change is a `PathMtuChanged` event.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from pilotif.node.events import EventSink, PathMtuChanged
from pilotif.node.peers import TrustedPeer
from pilotif.wg.device import Device
from pilotif.wg.events import Event, HandshakeCompleted, PathProbeAcked, PeerEndpoint

PROBE_TIMEOUT_S: Final = 1.0
"""How long a probe's answer is waited for (a round trip on any path we carry)."""
TOP_TRIES: Final = 2
"""Probes of the full MTU before the ladder (one lost probe is not a black hole)."""
RETRY_S: Final = 30.0
"""After a search that got no answer at all, the next one."""
ENDPOINT_CHECK_S: Final = 2.0
"""How often each peer's endpoint is compared with the one its MTU was found for."""
RAISE_S: Final = 600.0
"""A peer below the full MTU is probed at the full MTU again this often (RFC 8899's
PMTU_RAISE_TIMER)."""
CONFIRM_S: Final = 120.0
"""A peer at the full MTU is probed at it again this often (RFC 8899's
CONFIRMATION_TIMER): a path that starts dropping large packets on the same endpoint (a
tunnel or a smaller link on the way) is found within this, at one probe per peer."""
LADDER: Final = (1400, 1380, 1360, 1340, 1320, 1300, 1280, 1260, 1240, 1220, 1200)
"""Sizes (plaintext bytes) tried below the full MTU: down to 1200, which fits in the
1280 bytes every IPv6 path carries after our 80 bytes of UDP, IP and WireGuard."""


@dataclass
class _Search:
    """One peer's probing."""

    peer: TrustedPeer
    """Whom it is for (its hostname names it in events)."""
    endpoint: PeerEndpoint | None = None
    """The endpoint the peer's MTU was found for (or is being found for)."""
    probes: dict[int, int] = field(default_factory=dict)
    """Probe id -> size, of the probes sent and not answered yet."""
    answered: int | None = None
    """The largest size answered in this search."""
    tries: int = 0
    """Probes of the full MTU sent in this search."""
    due_s: float | None = None
    """When to look at this search next (None: nothing to do)."""
    settled: bool = False
    """The search is over: at `due_s`, if any, the next one starts."""


class PathMtuProber:
    """Every trusted peer's path MTU; see the module docstring."""

    def __init__(self, device: Device, sink: EventSink) -> None:
        self.device = device
        self._sink = sink
        self._searches: dict[bytes, _Search] = {}
        self._next_id = 1
        self._check_s: float | None = None
        """When to compare the peers' endpoints next."""

    def add(self, peer: TrustedPeer, now: float) -> None:
        """A trusted peer: searched once it has a session."""
        self._searches[peer.public_key] = _Search(peer)
        if self._check_s is None:
            self._check_s = now + ENDPOINT_CHECK_S

    def remove(self, key: bytes) -> None:
        self._searches.pop(key, None)

    def mtu_of(self, key: bytes) -> int:
        """The largest packet the peer is sent now."""
        state = self.device.peer(key)
        return state.mtu if state is not None and state.mtu is not None else self.device.mtu

    def device_reported(self, events: Iterable[Event], now: float) -> None:
        """A session (start a search where none ran on this endpoint) and probes'
        answers."""
        for event in events:
            search = self._searches.get(event.public_key)
            if search is None:
                continue
            if isinstance(event, PathProbeAcked):
                self._answered(event.public_key, search, event, now)
            elif isinstance(event, HandshakeCompleted) and search.endpoint is None:
                self._start(event.public_key, search, now)

    def next_timer(self) -> float | None:
        """When `handle_timer` is due next."""
        deadlines = [s.due_s for s in self._searches.values() if s.due_s is not None]
        if self._check_s is not None:
            deadlines.append(self._check_s)
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Searches whose probes timed out or whose next one is due, and peers whose
        endpoint changed (looked at every ENDPOINT_CHECK_S)."""
        check = self._check_s is None or self._check_s <= now
        if check:
            self._check_s = now + ENDPOINT_CHECK_S if self._searches else None
        for key, search in self._searches.items():
            state = self.device.peer(key)
            if state is None or state.current is None:
                if search.due_s is not None and search.due_s <= now:
                    # Nothing can be probed without a session: its next one starts over.
                    search.endpoint = search.due_s = None
                continue
            moved = search.endpoint is not None and state.endpoint != search.endpoint
            due = search.due_s is not None and search.due_s <= now
            if (check and moved) or (due and search.settled):
                self._start(key, search, now)
            elif due:
                self._timed_out(key, search, now)

    def _start(self, key: bytes, search: _Search, now: float) -> None:
        """A new search at the peer's current endpoint: the full MTU first."""
        state = self.device.peer(key)
        search.endpoint = state.endpoint if state is not None else None
        search.probes.clear()
        search.answered = None
        search.tries = 0
        search.settled = False
        self._probe_top(key, search, now)

    def _probe_top(self, key: bytes, search: _Search, now: float) -> None:
        search.tries += 1
        self._probe(key, search, self.device.mtu, now)
        search.due_s = now + PROBE_TIMEOUT_S

    def _probe(self, key: bytes, search: _Search, size: int, now: float) -> None:
        probe_id = self._next_id
        self._next_id = (self._next_id + 1) % 2**32 or 1
        if self.device.send_path_probe(key, probe_id, size, now):
            search.probes[probe_id] = size

    def _answered(self, key: bytes, search: _Search, event: PathProbeAcked, now: float) -> None:
        if search.settled or search.probes.pop(event.probe_id, None) != event.size:
            return
        search.answered = max(search.answered or 0, event.size)
        if event.size >= self.device.mtu:
            self._settle(key, search, None, now)

    def _timed_out(self, key: bytes, search: _Search, now: float) -> None:
        """The full MTU again, then the ladder; after the ladder, the verdict."""
        if search.answered is not None:
            self._settle(key, search, search.answered, now)
        elif search.tries < TOP_TRIES:
            self._probe_top(key, search, now)
        elif search.tries == TOP_TRIES:
            search.tries += 1
            for size in LADDER:
                if size < self.device.mtu:
                    self._probe(key, search, size, now)
            search.due_s = now + PROBE_TIMEOUT_S
        else:
            search.probes.clear()
            search.settled = True
            search.due_s = now + RETRY_S

    def _settle(self, key: bytes, search: _Search, mtu: int | None, now: float) -> None:
        """The peer's MTU is `mtu` (None: the full one) until the next search."""
        search.probes.clear()
        search.settled = True
        search.due_s = now + (CONFIRM_S if mtu is None else RAISE_S)
        before = self.mtu_of(key)
        self.device.set_peer_mtu(key, mtu)
        after = self.mtu_of(key)
        if after != before:
            self._sink.items.append(PathMtuChanged(search.peer.hostname, key, after))
