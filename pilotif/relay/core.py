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

from pilotif.control.gate import ControlGate, Outgoing, RelayLimit
from pilotif.control.tickets import check_ticket, ticket_key
from pilotif.control.wire import (
    CONTROL_TYPE,
    MAX_REQUEST_ID,
    RELAY_TYPE,
    REQUEST_MACS_SIZE,
    ControlChannel,
    StaleCounter,
    WireError,
    control_sender,
    error_reply,
    id_field,
    pack_relay,
    stale_counter_reply,
)
from pilotif.util.lru import BoundedLru
from pilotif.wg.crypto import public_key as _public_key
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
        self.public_key = _public_key(private_key)
        self.counters: Counter[str] = Counter()
        self.counter = first_counter
        """The counter of the latest message sealed (the service keeps it rising across
        restarts with a CounterLease)."""
        self.instance = (
            instance if instance is not None else int.from_bytes(os.urandom(8)) % MAX_REQUEST_ID
        )
        self._private_key = private_key
        self._gate = ControlGate(private_key, self.counters)
        self._ticket_key = ticket_key(private_key, registry_key)
        self._channels: BoundedLru[bytes, ControlChannel] = BoundedLru(MAX_CHANNELS)
        self._nodes: OrderedDict[bytes, _Attached] = OrderedDict()
        """Attached nodes, the longest silent first."""
        self._owners: dict[Endpoint, bytes] = {}
        self._relay_limit = RelayLimit(self.counters)

    @property
    def attached(self) -> int:
        """How many nodes are attached."""
        return len(self._nodes)

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        """Everything to send in answer to one datagram from `source`."""
        kind = data[0] if data else None
        if kind == RELAY_TYPE:
            return self._relay(data, source, now)
        if kind == CONTROL_TYPE:
            return self._control(data, source, now)
        self.counters["unknown_type"] += 1
        return []

    def expire(self, now: float) -> None:
        """Forget nodes that have not attached for ATTACH_TIMEOUT_S."""
        while self._nodes:
            key, node = next(iter(self._nodes.items()))
            if now - node.seen_s <= ATTACH_TIMEOUT_S:
                break
            self._detach(key)

    # -- relaying --------------------------------------------------------------------

    def _relay(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        taken = self._relay_limit.take(data, source, now)
        if taken is None:
            return []
        destination, inner = taken
        sender = self._owners.get(source)
        node = self._nodes.get(sender) if sender is not None else None
        if sender is None or node is None or now - node.seen_s > ATTACH_TIMEOUT_S:
            return self._gate.unknown_source(source, now)
        target = self._nodes.get(destination)
        if target is None or now - target.seen_s > ATTACH_TIMEOUT_S:
            self.counters["relay_offline"] += 1
            return []
        expires = node.tickets.get(destination)
        if expires is None or expires <= now:
            self.counters["relay_not_trusted"] += 1
            return []
        self.counters["relayed_packets"] += 1
        self.counters["relayed_bytes"] += len(inner)
        return [(pack_relay(sender, inner), target.endpoint)]

    # -- control messages ----------------------------------------------------------

    def _control(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        refused = self._gate.admit(data, source, now)
        if refused is not None:
            return refused
        sealed = data[:-REQUEST_MACS_SIZE]
        try:
            sender = control_sender(sealed)
            channel = self._channels.get(sender)
            if channel is None:
                if not self._gate.new_key_allowed(source, now):
                    return []
                channel = ControlChannel(
                    self._private_key, sender, local_is_registry=True, local_public=self.public_key
                )
        except WireError as error:
            self.counters[error.reason] += 1
            return []
        except ValueError:
            self.counters["bad_key"] += 1
            return []
        try:
            message = channel.open(sealed)
        except StaleCounter as stale:
            # A node that restarted counts from below: tell it where to go above.
            self.counters["stale_counter"] += 1
            answer = stale_counter_reply(stale.floor)
            return [(datagram, source) for datagram in self._reply(channel, stale.message, answer)]
        except WireError as error:
            self.counters[error.reason] += 1
            return []
        self._channels.remember(sender, channel)
        if message.get("op") != "attach":
            self.counters["unknown_op"] += 1
            answer = error_reply("unknown_op", "a relay only takes attach", "")
        else:
            answer = self._attach(sender, message, source, now)
        return [(datagram, source) for datagram in self._reply(channel, message, answer)]

    def _reply(
        self, channel: ControlChannel, request: dict[str, Any], answer: dict[str, Any]
    ) -> list[bytes]:
        """The sealed answer to a request (none to a message without an id)."""
        request_id = id_field(request, "id")
        if request_id is None:
            return []
        session = id_field(request, "session")
        payload = {**answer, "id": request_id, "instance": self.instance}
        if session is not None:
            payload["session"] = session
        self.counter += 1
        return [channel.seal(payload, self.counter)]

    def _attach(
        self, key: bytes, message: dict[str, Any], source: Endpoint, now: float
    ) -> dict[str, Any]:
        if message.get("instance") != self.instance:
            # The first attach of a node (or one recorded before we restarted): the
            # reply names our instance, and the node's next attach carries it.
            self.counters["new_instance"] += 1
            return error_reply("new_instance", "attach again with this instance", "")
        node = self._nodes.pop(key, None)
        if node is None:
            node = _Attached(source, now)
            if len(self._nodes) >= MAX_ATTACHED:
                self._detach(next(iter(self._nodes)))
        elif node.endpoint != source and self._owners.get(node.endpoint) == key:
            del self._owners[node.endpoint]
        previous = self._owners.get(source)
        if previous is not None and previous != key:
            # A NAT gave this address to another node: the earlier one is gone from it.
            self._detach(previous)
        self._nodes[key] = node
        self._owners[source] = key
        node.endpoint, node.seen_s = source, now
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

    def _detach(self, key: bytes) -> None:
        node = self._nodes.pop(key, None)
        if node is not None and self._owners.get(node.endpoint) == key:
            del self._owners[node.endpoint]

    def describe(self) -> dict[str, Any]:
        """What `relay_stopped` logs and the metrics show: attached nodes and counters."""
        return {"attached": self.attached, **dict(sorted(self.counters.items()))}
