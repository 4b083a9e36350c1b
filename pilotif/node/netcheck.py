"""`pilotif netcheck`'s probing, sans-IO (Tailscale's net/netcheck): what the network
under a node lets through, learned from the registry's and the relays' answers to
netcheck probes (pilotif.control.probe_answer). Datagrams, answers and `now` in;
datagrams to send, the next timer and a `UdpReport` out.

What it sends, all from one UDP port per address family (so that the answers compare
one NAT mapping towards several destinations):
- a small probe to each server (the registry's addresses, each relay): does UDP work
  over IPv4, over IPv6; the round trip; the public endpoint each server saw;
- padded probes of each size of MTU_SIZES to the registry (the IP packet's size: the
  caller's socket sets DF and does not fragment): the largest answered is the MTU that
  passes towards it (RFC 8899's probing, no trust in ICMP);
- once a public IPv4 endpoint is known, a probe to it: if it comes back to us the NAT
  hairpins (a node reaches a peer behind the same NAT at its public endpoint).

An unanswered probe goes again after RETRY_S, then twice that, TRIES times in all, each
try with a new id (an answer to an earlier try still counts, and times from its own
send). The run ends when every probe is answered or given up (its last wait over), or
at the deadline. Answers that are malformed, name no probe of ours, come from another
address than the probe went to, or tell another size are ignored and counted.
"""

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from pilotif.control.probe_answer import (
    ANSWER_TYPE,
    MIN_PROBE_SIZE,
    PROBE_ID_BYTES,
    PROBE_TYPE,
    pack_probe,
    parse_answer,
    probe_id_of,
)
from pilotif.control.wire import WireError
from pilotif.wg.events import Endpoint

DEFAULT_TIMEOUT_S: Final = 5.0
"""The longest a run takes (`pilotif netcheck --timeout`)."""
RETRY_S: Final = 0.5
"""The wait after a probe's first try; it doubles after each."""
TRIES: Final = 3
MTU_SIZES: Final = (1500, 1492, 1480, 1460, 1440, 1420, 1400, 1380, 1360, 1340, 1320, 1300, 1280)
"""IP packet sizes tried towards the registry (bytes): Ethernet's, PPPoE's, common
tunnels', down to the 1280 every IPv6 path carries."""
IPV4_UDP_HEADERS_BYTES: Final = 28
IPV6_UDP_HEADERS_BYTES: Final = 48


class ServerKind(StrEnum):
    """Who answers probes."""

    REGISTRY = "registry"
    RELAY = "relay"


class _Purpose(StrEnum):
    SERVER = "server"
    MTU = "mtu"
    HAIRPIN = "hairpin"


@dataclass(frozen=True)
class Server:
    """A registry address or a relay, probed at `endpoint` (an address literal)."""

    kind: ServerKind
    endpoint: Endpoint


@dataclass(frozen=True)
class ServerResult:
    """What probing one server found."""

    server: Server
    rtt_ms: float | None
    """The round trip of the first answer (None: no answer)."""
    seen_from: Endpoint | None
    """Our public endpoint as that server saw it."""


@dataclass(frozen=True)
class UdpReport:
    """What UDP probing found."""

    udp_v4: bool
    udp_v6: bool | None
    """None: no server has an IPv6 address (nothing to ask)."""
    public_v4: tuple[Endpoint, ...]
    public_v6: tuple[Endpoint, ...]
    mapping_varies: bool | None
    """Whether the NAT gave our port another public endpoint towards another server
    (a symmetric NAT: punching needs help); None with fewer than two IPv4 answers."""
    hairpinning: bool | None
    """Whether a probe to our own public IPv4 endpoint came back (None: no endpoint)."""
    mtu: int | None
    """The largest IP packet answered by the registry (None: none was)."""
    servers: tuple[ServerResult, ...]

    @property
    def nearest_relay(self) -> ServerResult | None:
        """The relay with the shortest round trip (None: no relay answered)."""
        answered = [
            r for r in self.servers if r.server.kind is ServerKind.RELAY and r.rtt_ms is not None
        ]
        return min(answered, key=lambda r: r.rtt_ms or 0.0, default=None)


@dataclass
class _Probe:
    """One question, asked up to TRIES times."""

    purpose: _Purpose
    destination: Endpoint
    size: int
    """The datagram's bytes."""
    tries: int = 0
    due_s: float = 0.0
    """When to send it again, or (after the last try) to give it up."""
    answered: bool = False
    given_up: bool = False
    sent_s: dict[bytes, float] = field(default_factory=dict)
    """Each try's id -> when it went."""


def _is_v6(endpoint: Endpoint) -> bool:
    return ":" in endpoint[0]


def _headers_bytes(destination: Endpoint) -> int:
    """The IP and UDP headers of a datagram to `destination`."""
    return IPV6_UDP_HEADERS_BYTES if _is_v6(destination) else IPV4_UDP_HEADERS_BYTES


def _packet_size(probe: _Probe) -> int:
    """The IP packet a probe travels in (bytes)."""
    return probe.size + _headers_bytes(probe.destination)


class NetcheckProbes:
    """See the module docstring. `mtu_target` is where padded probes go (a registry
    address; None: no MTU search)."""

    def __init__(
        self,
        servers: Sequence[Server],
        now: float,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        mtu_target: Endpoint | None = None,
        new_id: Callable[[], bytes] = lambda: os.urandom(PROBE_ID_BYTES),
    ) -> None:
        self.servers = tuple(dict.fromkeys(servers))
        self.deadline_s = now + timeout_s
        self.ignored: Counter[str] = Counter()
        """Datagrams ignored, by reason."""
        self._new_id = new_id
        self._probes: list[_Probe] = [
            _Probe(_Purpose.SERVER, s.endpoint, MIN_PROBE_SIZE) for s in self.servers
        ]
        if mtu_target is not None:
            self._probes += [
                _Probe(_Purpose.MTU, mtu_target, size - _headers_bytes(mtu_target))
                for size in MTU_SIZES
            ]
        self._by_id: dict[bytes, _Probe] = {}
        self._first_answer: dict[Endpoint, tuple[float, Endpoint]] = {}
        """Server endpoint -> (round trip s, our endpoint as it saw us)."""
        self._hairpin: _Probe | None = None
        self._outgoing: list[tuple[bytes, Endpoint]] = []
        self._send_due(now)

    # -- inputs ------------------------------------------------------------------------

    def receive(self, data: bytes, source: Endpoint, now: float) -> None:
        """A datagram that came to one of our sockets from `source`."""
        kind = data[0] if data else None
        if kind == ANSWER_TYPE:
            self._answer(data, source, now)
        elif kind == PROBE_TYPE:
            self._own_probe(data)
        else:
            self.ignored["unknown_type"] += 1

    def handle_timer(self, now: float) -> None:
        """Send again what is due; give up what waited long enough."""
        self._send_due(now)

    # -- outputs -----------------------------------------------------------------------

    def take_datagrams(self) -> list[tuple[bytes, Endpoint]]:
        """The datagrams to send now, and where to."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def get_timer(self) -> float:
        """When to call `handle_timer` next (the deadline at the latest)."""
        due = [p.due_s for p in self._probes_pending()]
        return min([*due, self.deadline_s])

    def done(self, now: float) -> bool:
        """Whether the run is over: everything answered or given up, or the deadline."""
        return now >= self.deadline_s or not any(self._probes_pending())

    def report(self) -> UdpReport:
        """What was found so far."""
        results = tuple(
            ServerResult(
                s,
                round(found[0] * 1000, 1) if found else None,
                found[1] if found else None,
            )
            for s in self.servers
            for found in [self._first_answer.get(s.endpoint)]
        )
        v4 = [r for r in results if not _is_v6(r.server.endpoint) and r.seen_from is not None]
        v6 = [r for r in results if _is_v6(r.server.endpoint) and r.seen_from is not None]
        seen_v4 = tuple(dict.fromkeys(r.seen_from for r in v4 if r.seen_from is not None))
        seen_v6 = tuple(dict.fromkeys(r.seen_from for r in v6 if r.seen_from is not None))
        has_v6 = any(_is_v6(s.endpoint) for s in self.servers)
        hairpin = self._hairpin
        answered_mtu = [
            _packet_size(p) for p in self._probes if p.purpose is _Purpose.MTU and p.answered
        ]
        return UdpReport(
            udp_v4=bool(v4),
            udp_v6=bool(v6) if has_v6 else None,
            public_v4=seen_v4,
            public_v6=seen_v6,
            mapping_varies=len(seen_v4) > 1 if len(v4) > 1 else None,
            hairpinning=hairpin.answered if hairpin is not None else None,
            mtu=max(answered_mtu, default=None),
            servers=results,
        )

    # -- internals ---------------------------------------------------------------------

    def _probes_pending(self) -> list[_Probe]:
        """Probes neither answered nor given up, and not made moot by a larger MTU
        probe's answer."""
        largest = max(
            (p.size for p in self._probes if p.purpose is _Purpose.MTU and p.answered), default=0
        )
        return [
            p
            for p in self._probes
            if not p.answered
            and not p.given_up
            and not (p.purpose is _Purpose.MTU and p.size < largest)
        ]

    def _send_due(self, now: float) -> None:
        for probe in self._probes_pending():
            if probe.due_s > now:
                continue
            if probe.tries >= TRIES:
                probe.given_up = True
                continue
            probe_id = self._new_id()
            self._by_id[probe_id] = probe
            probe.sent_s[probe_id] = now
            probe.due_s = now + RETRY_S * 2**probe.tries
            probe.tries += 1
            self._outgoing.append((pack_probe(probe_id, probe.size), probe.destination))

    def _answer(self, data: bytes, source: Endpoint, now: float) -> None:
        try:
            answer = parse_answer(data)
        except WireError as error:
            self.ignored[error.reason] += 1
            return
        probe = self._by_id.get(answer.probe_id)
        if probe is None or probe.purpose is _Purpose.HAIRPIN:
            self.ignored["unknown_probe"] += 1
            return
        if source != probe.destination:
            self.ignored["wrong_source"] += 1
            return
        if answer.size != probe.size:
            self.ignored["wrong_size"] += 1
            return
        if probe.answered:
            return
        probe.answered = True
        if probe.purpose is _Purpose.SERVER:
            rtt_s = now - probe.sent_s[answer.probe_id]
            self._first_answer[source] = (rtt_s, answer.seen_from)
            if self._hairpin is None and not _is_v6(answer.seen_from):
                self._hairpin = _Probe(_Purpose.HAIRPIN, answer.seen_from, MIN_PROBE_SIZE)
                self._probes.append(self._hairpin)
                self._send_due(now)

    def _own_probe(self, data: bytes) -> None:
        """A probe that came back to us: the hairpin one, if its id is ours."""
        try:
            probe_id = probe_id_of(data)
        except WireError as error:
            self.ignored[error.reason] += 1
            return
        probe = self._by_id.get(probe_id)
        if probe is None or probe.purpose is not _Purpose.HAIRPIN:
            self.ignored["unknown_probe"] += 1
            return
        probe.answered = True
