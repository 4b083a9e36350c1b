"""The node's standalone relays, sans-IO.

The node attaches to every relay the registry names: so that a peer can reach it
through any of them, and to measure each one's round trip. The nearest relay that
answers is its home: relayed datagrams leave through it, and the node presents its
tickets (one per trusted peer, from the registry) there. A home relay that leaves an
attach unanswered for SILENT_AFTER_S is replaced by the next nearest at once; with none
alive the registry relays, as it does when it names no relays.

Inputs: `update` (the relays of each registration), `receive` for datagrams from a
relay's address, `set_tickets`, and `handle_timer(now)`. Outputs: `outgoing` and the
`HomeRelayChanged`, `TicketsPresented` and `RelaysListed` events in `events`.

`Tickets` fetches the home relay's tickets from the registry, page by page, and hands
them to `Relays.set_tickets`; only while the registry answers (a node that lost it asks
nothing but its probes). A node that started from its cache (`pilotif.node.cache`) with
the registry away presents the tickets it kept for that relay, if it is home again, until
the registry gives new ones: its relayed peers are reached as before, for as long as
those tickets last (the relay checks their expiry, TICKET_LIFETIME_S from their issue).
"""

from dataclasses import dataclass, field
from typing import Any, Final

from pilotif.control.relay_info import RelayInfo
from pilotif.control.tickets import TICKET_LIFETIME_S
from pilotif.node.cache import CachedTickets
from pilotif.node.registry_link import (
    Errands,
    GaveUp,
    RegistryLink,
    RelaySourceUnknown,
    Reply,
    message_strings,
)
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import encode_key

ATTACH_EVERY_S: Final = 15.0
"""How often the node attaches to each relay again: it keeps the NAT's mapping towards
the relay, and the relay's memory of the node (ATTACH_TIMEOUT_S there), alive."""
ATTACH_ACTIVE_S: Final = 2.0
"""How often it attaches to its home relay while a peer is relayed: a dead home relay
is noticed within this and SILENT_AFTER_S."""
SILENT_AFTER_S: Final = 1.0
"""An attach unanswered this long: the relay is taken for gone."""
NEARER_FACTOR: Final = 0.7
"""A live home relay is left for another only if that one's round trip is this much
shorter (round trips jitter; moving costs a ticket fetch)."""
TICKETS_PER_ATTACH: Final = 12
"""Tickets one attach carries (it must fit one datagram)."""
NOTICE_ATTACH_MIN_S: Final = 2.0
"""A relay's notice that it does not know our address (0x55: 4 bytes that anyone can
send from the relay's address) makes us attach again at most this often per relay, and
not while an attach there waits for its answer (that one shows where we are now): a
spoofer's notices never cost more than one attach and its retries per interval."""
TICKET_RETRY_S: Final = 5.0
"""The wait before tickets are asked for again after the registry refused or was silent."""
TICKET_REFRESH_S: Final = TICKET_LIFETIME_S / 2
"""How often the tickets at our home relay are fetched again (before they expire)."""


@dataclass(frozen=True)
class HomeRelayChanged:
    """Relayed datagrams go through `home` from now on (None: through the registry)."""

    home: RelayInfo | None
    previous: RelayInfo | None


@dataclass(frozen=True)
class TicketsPresented:
    """The home relay `relay` took every ticket we have: relayed handshakes that it
    dropped before can go again now."""

    relay: RelayInfo


@dataclass(frozen=True)
class RelaysListed:
    """The registry named another set of relays (added or dropped ones)."""


RelaysEvent = HomeRelayChanged | TicketsPresented | RelaysListed


@dataclass
class _Relay:
    info: RelayInfo
    link: RegistryLink
    instance: int | None = None
    """The relay process's instance, which every attach must name (learnt from a reply)."""
    rtt_s: float | None = None
    alive: bool = False
    attach_at_s: float = 0.0
    waiting: dict[int, tuple[float, list[str]]] = field(default_factory=dict)
    """Attach request id -> (when sent, the tickets it carries)."""
    tickets: list[str] = field(default_factory=list)
    """What we present there (its home relay only)."""
    notice_attach_at_s: float = 0.0
    """When a notice from it may make us attach again, at the earliest."""


class Relays:
    """See the module docstring."""

    def __init__(self, private_key: bytes) -> None:
        self._private_key = private_key
        self._relays: dict[Endpoint, _Relay] = {}
        self.home: RelayInfo | None = None
        self.active = False
        """Whether a peer is relayed now (the home relay is then checked often)."""
        self.outgoing: list[tuple[bytes, Endpoint]] = []
        self.events: list[RelaysEvent] = []

    def set_active(self, active: bool, now: float) -> None:
        """Whether a peer is relayed now: the home relay is then attached to every
        ATTACH_ACTIVE_S, so that its death shows within seconds."""
        self.active = active
        home = self._relays.get(self.home_endpoint) if self.home_endpoint else None
        if active and home is not None:
            home.attach_at_s = min(home.attach_at_s, now + ATTACH_ACTIVE_S)

    @property
    def home_endpoint(self) -> Endpoint | None:
        """Where relayed datagrams go (None: through the registry)."""
        return self.home.endpoint if self.home is not None else None

    def endpoints(self) -> set[Endpoint]:
        """The relays' addresses (datagrams from them go to `receive`)."""
        return set(self._relays)

    def infos(self) -> tuple[RelayInfo, ...]:
        """The relays the registry named (what the node cache keeps)."""
        return tuple(state.info for state in self._relays.values())

    def home_tickets(self) -> tuple[str, ...]:
        """The tickets we present at our home relay (none without one)."""
        state = self._relays.get(self.home_endpoint) if self.home_endpoint else None
        return tuple(state.tickets) if state is not None else ()

    def update(self, relays: list[RelayInfo], now: float) -> None:
        """The relays the registry names now: attach to new ones at once, drop others."""
        wanted = {relay.endpoint: relay for relay in relays}
        if {state.info for state in self._relays.values()} != set(wanted.values()):
            self.events.append(RelaysListed())
        for endpoint in list(self._relays):
            if self._relays[endpoint].info != wanted.get(endpoint):
                del self._relays[endpoint]
        for endpoint, info in wanted.items():
            if endpoint not in self._relays:
                link = RegistryLink(self._private_key, endpoint, info.key, first_counter=0)
                self._relays[endpoint] = _Relay(info, link)
                self._attach(self._relays[endpoint], [], now)
        self._choose_home()
        self._collect()

    def set_tickets(self, relay: RelayInfo, tickets: list[str], now: float) -> None:
        """Present `tickets` (from the registry, for `relay`) there, if it is still home."""
        state = self._relays.get(relay.endpoint)
        if state is None or state.info != relay or relay != self.home:
            return
        state.tickets = tickets
        self._present(state, now)
        self._collect()

    def receive(self, data: bytes, source: Endpoint, now: float) -> bool:
        """Take a control datagram from `source`; False if no relay is there."""
        state = self._relays.get(source)
        if state is None:
            return False
        for item in state.link.receive(data, now, source):
            if isinstance(item, Reply):
                self._on_reply(state, item, now)
            elif isinstance(item, RelaySourceUnknown):
                self._on_notice(state, now)
        self._choose_home()
        self._collect()
        return True

    def next_timer(self) -> float | None:
        """When `handle_timer` is due next."""
        deadlines: list[float] = []
        for state in self._relays.values():
            deadlines.append(state.attach_at_s)
            retry = state.link.next_timer()
            if retry is not None:
                deadlines.append(retry)
            if state.alive:
                deadlines += [sent + SILENT_AFTER_S for sent, _ in state.waiting.values()]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Attaches and retries that are due; relays silent too long are taken for gone."""
        for state in self._relays.values():
            for item in state.link.handle_timer(now):
                if isinstance(item, GaveUp):
                    state.waiting.pop(item.request_id, None)
            if any(now - sent >= SILENT_AFTER_S for sent, _ in state.waiting.values()):
                state.alive = False
            if now >= state.attach_at_s:
                self._attach(state, [], now)
        self._choose_home()
        self._collect()

    def describe(self) -> list[dict[str, Any]]:
        """Each relay for `pilotif status`: address, round trip, alive, home."""
        return [
            {
                "endpoint": state.info.to_json()["endpoint"],
                "rtt_ms": round(state.rtt_s * 1000, 1) if state.rtt_s is not None else None,
                "alive": state.alive,
                "home": state.info == self.home,
            }
            for state in self._relays.values()
        ]

    # -- internals ---------------------------------------------------------------------

    def _attach(self, state: _Relay, tickets: list[str], now: float) -> None:
        often = self.active and state.info == self.home
        state.attach_at_s = now + (ATTACH_ACTIVE_S if often else ATTACH_EVERY_S)
        fields = {"instance": state.instance, "tickets": tickets}
        state.waiting[state.link.request("attach", fields, now)] = (now, tickets)

    def _on_notice(self, state: _Relay, now: float) -> None:
        """Our NAT mapping towards the relay may have changed: attach from where we are
        now, unless an attach is on its way or one went for a notice lately."""
        if state.waiting or now < state.notice_attach_at_s:
            return
        state.notice_attach_at_s = now + NOTICE_ATTACH_MIN_S
        self._attach(state, [], now)

    def _present(self, state: _Relay, now: float) -> None:
        for start in range(0, len(state.tickets), TICKETS_PER_ATTACH):
            self._attach(state, state.tickets[start : start + TICKETS_PER_ATTACH], now)

    def _on_reply(self, state: _Relay, reply: Reply, now: float) -> None:
        sent = state.waiting.pop(reply.request_id, None)
        if sent is None:
            return
        instance = reply.message.get("instance")
        if reply.message.get("code") == "new_instance" and type(instance) is int:
            # A relay we have not attached to yet, or one that restarted (and lost
            # our tickets): attach again, naming it, with every ticket we have there.
            restarted = state.instance is not None
            state.instance = instance
            if restarted and state.tickets:
                self._present(state, now)
            else:
                self._attach(state, sent[1], now)
            return
        if reply.message.get("ok") is not True:
            return
        state.alive = True
        if sent[1] and not any(tickets for _, tickets in state.waiting.values()):
            self.events.append(TicketsPresented(state.info))
        if state.link.rtt_s is not None:
            state.rtt_s = state.link.rtt_s

    def _choose_home(self) -> None:
        alive = [s for s in self._relays.values() if s.alive and s.rtt_s is not None]
        current = next((s for s in alive if s.info == self.home), None)
        best = min(alive, key=lambda s: s.rtt_s or 0.0, default=None)
        if current is not None and best is not None:
            assert current.rtt_s is not None and best.rtt_s is not None
            if best.rtt_s >= current.rtt_s * NEARER_FACTOR:
                best = current
        home = best.info if best is not None else None
        if home != self.home:
            self.events.append(HomeRelayChanged(home, self.home))
            self.home = home
            if best is not None:
                best.tickets = []

    def _collect(self) -> None:
        for state in self._relays.values():
            if state.link.outgoing:
                self.outgoing += state.link.outgoing
                state.link.outgoing = []


@dataclass
class _TicketFetch:
    """Tickets for `relay` being fetched page by page (for the peers of `peers_version`)."""

    relay: RelayInfo
    peers_version: int
    tickets: list[str] = field(default_factory=list)


class Tickets:
    """The tickets of our home relay (one per trusted peer), fetched from the registry
    page by page when the home relay changed, when the peers changed, or before they
    expire; TICKET_RETRY_S after a refusal or a silence."""

    def __init__(self, relays: Relays, errands: Errands) -> None:
        self._relays = relays
        self._errands = errands
        self._fetch: _TicketFetch | None = None
        self._due_s: float | None = None
        self._version = -1
        """`peers_version` when the tickets at our home relay were fetched."""
        self.kept: CachedTickets | None = None
        """Tickets from the node cache, presented if their relay becomes home before the
        registry gives new ones."""

    def home_changed(self, home: RelayInfo | None, now: float) -> None:
        """Relayed datagrams go through `home` now: its tickets are due at once (and
        the kept ones for it, if any, are presented meanwhile)."""
        self._fetch = None
        self._due_s = now if home is not None else None
        if home is not None and self.kept is not None and self.kept.relay == home:
            self._relays.set_tickets(home, list(self.kept.tickets), now)

    def next_timer(self, registry_online: bool) -> float | None:
        """When a fetch is due (None while one is on its way or the registry is away)."""
        return self._due_s if self._fetch is None and registry_online else None

    def fetch_if_due(self, peers_version: int, now: float, *, registry_online: bool) -> None:
        """Start a fetch if the peers changed or the tickets are due (none is started
        while the registry is away)."""
        home = self._relays.home
        if home is None or self._fetch is not None or not registry_online:
            return
        due = self._due_s
        if self._version != peers_version or (due is not None and now >= due):
            self._fetch = _TicketFetch(home, peers_version)
            self._request(0, now)

    def page(self, reply: dict[str, Any], now: float) -> None:
        """A page of tickets; after the last, they go to the home relay."""
        fetch = self._fetch
        if fetch is None:
            return
        fetch.tickets += message_strings(reply.get("tickets"))
        next_offset = reply.get("next_offset")
        if type(next_offset) is int and next_offset > 0:
            self._request(next_offset, now)
            return
        self._fetch = None
        self._version = fetch.peers_version
        self._due_s = now + TICKET_REFRESH_S
        self.kept = None
        self._relays.set_tickets(fetch.relay, fetch.tickets, now)

    def abandon(self, now: float) -> None:
        """The registry refused or was silent: try again in TICKET_RETRY_S."""
        self._fetch = None
        self._due_s = now + TICKET_RETRY_S

    def _request(self, offset: int, now: float) -> None:
        assert self._fetch is not None
        relay = encode_key(self._fetch.relay.key)
        self._errands.send("relay_tickets", {"relay": relay, "offset": offset}, now)
