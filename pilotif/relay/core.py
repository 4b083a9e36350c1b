"""A standalone relay's logic, sans-IO: bytes, a source and the time in, datagrams out.

Nodes attach with a sealed `attach` request (0x50, the registry's wire format, through
the same gate: size, macs, cookie, rate limits). It binds the node's key to the address
it came from and carries tickets (pilotif.control.tickets): the registry's proof that the
node and a peer trust each other. A relay message (0x51) from an attached address goes
to the peer it names when that peer is attached too and the sender presented a ticket
for it; anything else is dropped and counted in `counters`. No database, no query per
packet: what the relay knows it heard within ATTACH_TIMEOUT_S.

Replays: each sender has a replay window while the relay runs, and every attach must
name the relay's `instance` (random at each start, given in every reply), so an attach
recorded before a restart binds nothing afterwards.
"""

import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from pilotif.control.forwarder import Forwarder
from pilotif.control.front import NO_FLOOR, ByType, ControlFront
from pilotif.control.gate import Outgoing
from pilotif.control.probe_answer import answering_probes
from pilotif.control.tickets import check_ticket, ticket_key
from pilotif.control.wire import MAX_REQUEST_ID, WireError, error_reply
from pilotif.wg.events import Endpoint

ATTACH_TIMEOUT_S: Final = 60.0
"""A node that has not attached again for this long is forgotten (nodes attach every
15 s, every few seconds while they relay)."""
MAX_ATTACHED: Final = 250_000
"""Nodes attached at once, at most (past it the longest silent is forgotten)."""
MAX_CHANNELS: Final = 250_000
"""Senders whose channel (keys, replay window) stays in memory."""
MAX_TICKETS_PER_NODE: Final = 10_000
"""Peers one node may hold tickets for (its trusted peers)."""
TRAFFIC_COUNTERS: Final = frozenset(
    {"relayed_packets", "relayed_bytes", "attaches", "tickets_accepted", "cookie_replies"}
)
"""Counters that count work done, not drops."""


@dataclass
class _Attached:
    """A node attached to this relay: where it is, and the peers it proved it may reach."""

    endpoint: Endpoint
    seen_s: float
    tickets: dict[bytes, int] = field(default_factory=dict)
    """Peer key -> when the ticket for it expires (Unix seconds)."""


class Attachments:
    """The nodes attached to this relay, and the forwarder's routes: a node is known by
    the address it attached from, reachable while it attaches again within
    ATTACH_TIMEOUT_S, and authorized towards the peers its tickets name."""

    def __init__(self) -> None:
        self.nodes: OrderedDict[bytes, _Attached] = OrderedDict()
        """Attached nodes, the longest silent first."""
        self._owners: dict[Endpoint, bytes] = {}

    def sender_at(self, source: Endpoint, now: float) -> bytes | None:
        """The attached node at `source` (None: none, or it has not attached in a while)."""
        sender = self._owners.get(source)
        node = self.nodes.get(sender) if sender is not None else None
        if node is None or now - node.seen_s > ATTACH_TIMEOUT_S:
            return None
        return sender

    def endpoint_of(self, sender: bytes, destination: bytes, now: float) -> Endpoint | None:
        """Where `destination` attached from, while it is attached."""
        target = self.nodes.get(destination)
        if target is None or now - target.seen_s > ATTACH_TIMEOUT_S:
            return None
        return target.endpoint

    def authorized(self, sender: bytes, destination: bytes, now: float) -> bool:
        """Whether `sender` holds a ticket for `destination` that has not expired."""
        expires = self.nodes[sender].tickets.get(destination)
        return expires is not None and expires > now

    def attach(self, key: bytes, source: Endpoint, now: float) -> _Attached:
        """Bind `key` to `source` (the longest silent node is let go when the relay is
        full; an earlier node at `source` is gone from it)."""
        node = self.nodes.pop(key, None)
        if node is None:
            node = _Attached(source, now)
            if len(self.nodes) >= MAX_ATTACHED:
                self.detach(next(iter(self.nodes)))
        elif node.endpoint != source and self._owners.get(node.endpoint) == key:
            del self._owners[node.endpoint]
        previous = self._owners.get(source)
        if previous is not None and previous != key:
            # A NAT gave this address to another node: the earlier one is gone from it.
            self.detach(previous)
        self.nodes[key] = node
        self._owners[source] = key
        node.endpoint, node.seen_s = source, now
        return node

    def detach(self, key: bytes) -> None:
        """Forget a node."""
        node = self.nodes.pop(key, None)
        if node is not None and self._owners.get(node.endpoint) == key:
            del self._owners[node.endpoint]

    def expire(self, now: float) -> None:
        """Forget nodes that have not attached for ATTACH_TIMEOUT_S."""
        while self.nodes:
            key, node = next(iter(self.nodes.items()))
            if now - node.seen_s <= ATTACH_TIMEOUT_S:
                break
            self.detach(key)


def _nothing_known(_: bytes) -> tuple[None, int]:
    """A relay keeps nothing of a sender beyond its channel."""
    return None, NO_FLOOR


class RelayCore:
    """See the module docstring. `registry_key` is the public key of the registry whose
    tickets this relay accepts; `now` is wall-clock seconds (tickets expire in it)."""

    def __init__(
        self,
        private_key: bytes,
        registry_key: bytes,
        *,
        first_counter: int,
        instance: int | None = None,
    ) -> None:
        self.counters: Counter[str] = Counter()
        self.instance = (
            instance if instance is not None else int.from_bytes(os.urandom(8)) % MAX_REQUEST_ID
        )
        self._front: ControlFront[None] = ControlFront(
            private_key,
            self.counters,
            first_counter=first_counter,
            max_channels=MAX_CHANNELS,
            lookup=_nothing_known,
            reply_fields={"instance": self.instance},
        )
        self.public_key = self._front.public_key
        self._ticket_key = ticket_key(private_key, registry_key)
        self._attachments = Attachments()
        forwarder = Forwarder(self.counters, self._front.gate, self._attachments)
        self._by_type = ByType(
            forwarder.forward,
            self._control,
            answering_probes(self._front.gate, self.counters, self._other),
        )

    @property
    def counter(self) -> int:
        """The counter of the latest message sealed (the service keeps it rising across
        restarts with a CounterLease)."""
        return self._front.counter

    @property
    def attached(self) -> int:
        """How many nodes are attached."""
        return len(self._attachments.nodes)

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        """Everything to send in answer to one datagram from `source`."""
        return self._by_type(data, source, now)

    def urgent(self, data: bytes) -> bool:
        """Whether the shell serves `data` before its backlog (ControlFront.urgent)."""
        return self._front.urgent(data)

    def waited(self, delay_s: float, now: float) -> None:
        """A datagram of the shell's backlog waited `delay_s` since it arrived: while they
        all wait too long, new channels are answered busy (ControlGate.behind)."""
        self._front.gate.waited(delay_s, now)

    def drained(self, now: float) -> None:
        """The shell's backlog emptied (ControlGate.drained)."""
        self._front.gate.drained(now)

    def _other(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        self.counters["unknown_type"] += 1
        return []

    def expire(self, now: float) -> None:
        """Forget nodes that have not attached for ATTACH_TIMEOUT_S."""
        self._attachments.expire(now)

    def _control(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        opened = self._front.open(data, source, now)
        if isinstance(opened, list):
            return opened
        if opened.message.get("op") != "attach":
            self.counters["unknown_op"] += 1
            answer = error_reply("unknown_op", "a relay only takes attach", "")
        else:
            answer = self._attach(opened.sender, opened.message, source, now)
        reply = self._front.reply(opened.sender, opened.channel, opened.message, answer, source)
        return reply + opened.renewal

    def _attach(
        self, key: bytes, message: dict[str, Any], source: Endpoint, now: float
    ) -> dict[str, Any]:
        if message.get("instance") != self.instance:
            # The first attach of a node (or one recorded before we restarted): the
            # reply names our instance, and the node's next attach carries it.
            self.counters["new_instance"] += 1
            return error_reply("new_instance", "attach again with this instance", "")
        node = self._attachments.attach(key, source, now)
        self.counters["attaches"] += 1
        accepted = self._take_tickets(key, node, message.get("tickets", []), now)
        return {"op": "reply", "ok": True, "accepted": accepted}

    def _take_tickets(self, key: bytes, node: _Attached, tickets: object, now: float) -> int:
        if not isinstance(tickets, list):
            self.counters["bad_ticket"] += 1
            return 0
        if len(node.tickets) + len(tickets) > MAX_TICKETS_PER_NODE:
            node.tickets = {peer: at for peer, at in node.tickets.items() if at > now}
        accepted = 0
        for ticket in tickets:
            try:
                peer, expires = check_ticket(self._ticket_key, key, ticket, now)
            except WireError as error:
                self.counters[error.reason] += 1
                continue
            if peer in node.tickets or len(node.tickets) < MAX_TICKETS_PER_NODE:
                node.tickets[peer] = expires
                accepted += 1
        self.counters["tickets_accepted"] += accepted
        return accepted

    def describe(self) -> dict[str, Any]:
        """What `relay_stopped` logs and the metrics show: attached nodes and counters."""
        return {"attached": self.attached, **dict(sorted(self.counters.items()))}
