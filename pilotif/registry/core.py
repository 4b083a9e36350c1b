"""The registry's logic: `RegistryCore` answers datagrams (sans-IO: bytes, a source and
the time in, datagrams to send out); `pilotif.registry.server` runs it on a UDP socket.

The core authenticates control messages (0x50) per sender key, registers nodes, carries
trust requests and answers, coordinates hole punching, relays WireGuard ciphertext
between nodes that trust each other (0x51) and tells a node the registry key (0x52).
Peer input is hostile: whatever is malformed, unauthenticated, replayed, not allowed or
over a rate limit is dropped and counted in `counters`, never logged per packet.
docs/CONTROL_PROTOCOL.md is the contract with the node.
"""

import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Any, Final

from pilotif.control.gate import ControlGate, Outgoing, PrefixLimit, PrefixRate, RelayLimit
from pilotif.control.identity import HostnameError, normalize_hostname
from pilotif.control.ratelimit import TokenBuckets
from pilotif.control.relay_info import RelayInfo
from pilotif.control.tickets import TICKET_LIFETIME_S, issue_ticket, ticket_key
from pilotif.control.wire import (
    CONTROL_TYPE,
    COUNTER_LEASE,
    KEY_REQUEST,
    KEY_REQUEST_TYPE,
    MAX_PAYLOAD_BYTES,
    MAX_REQUEST_ID,
    RELAY_TYPE,
    REPLICA_KEEPALIVE,
    REQUEST_MACS_SIZE,
    ControlChannel,
    StaleCounter,
    WireError,
    control_sender,
    error_reply,
    format_endpoint,
    id_field,
    pack_key_reply,
    pack_relay,
    parse_endpoint,
    stale_counter_reply,
)
from pilotif.registry.joinkey import parse_join_key
from pilotif.registry.store import (
    NameTaken,
    NetworkFull,
    NodeRecord,
    NoRequest,
    Store,
    StoreError,
    UnknownNode,
)
from pilotif.util.logs import log_event
from pilotif.util.lru import BoundedLru
from pilotif.wg.crypto import public_key as _public_key
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

ONLINE_WINDOW_S: Final = 60.0
"""A node is online if it registered (heartbeat) this recently."""
LOOKUP_LIMIT: Final = 20
"""Most nodes one lookup returns (fewer if they do not fit one reply)."""
TICKET_PAGE_LIMIT: Final = 12
"""Most relay tickets one reply holds (the node forwards them in one attach)."""
TRUST_PAGE_LIMIT: Final = 20
"""Most entries one trust_list page holds (fewer if they do not fit one reply)."""
PENDING_PUSH_LIMIT: Final = 20
"""Most trust requests re-sent to a node after one of its registrations."""
MAX_TAGS: Final = 8
MAX_TAG_CHARS: Final = 32
MAX_LAN_ENDPOINTS: Final = 4
MAX_TRUST_MESSAGE_BYTES: Final = 256
"""Longest trust message, as JSON-encoded UTF-8, so that every push fits a datagram."""
NEW_NODES_PER_S: Final = 0.2
NEW_NODES_BURST: Final = 20.0
"""New registrations from one IPv4 address or IPv6 /64: names and addresses are finite."""
NEW_NODES_PER_IPV4_24_S: Final = 1.0
NEW_NODES_IPV4_24_BURST: Final = 100.0
NEW_NODES_PER_IPV6_48_S: Final = 0.5
NEW_NODES_IPV6_48_BURST: Final = 50.0
NEW_NODES_PER_IPV6_32_S: Final = 1.0
NEW_NODES_IPV6_32_BURST: Final = 100.0
"""New registrations from the networks around it, each counted too: a /48 holds 65,536
/64s and a /32 65,536 /48s, but gets a few times what one /64 gets, not that many times."""
NEW_NODE_RATES: Final = (
    PrefixRate(4, 32, NEW_NODES_PER_S, NEW_NODES_BURST),
    PrefixRate(4, 24, NEW_NODES_PER_IPV4_24_S, NEW_NODES_IPV4_24_BURST),
    PrefixRate(6, 64, NEW_NODES_PER_S, NEW_NODES_BURST),
    PrefixRate(6, 48, NEW_NODES_PER_IPV6_48_S, NEW_NODES_IPV6_48_BURST),
    PrefixRate(6, 32, NEW_NODES_PER_IPV6_32_S, NEW_NODES_IPV6_32_BURST),
)
JOIN_KEY_USES_PER_S: Final = 1.0
JOIN_KEY_BURST: Final = 100.0
"""New registrations with one join key (a fleet joins in a burst, a leaked key does not
fill the network at once)."""
DEFAULT_EXPIRE_AFTER_S: Final = 30 * 86_400.0
"""A node not seen for this long loses its name and address."""
MAX_CHANNELS: Final = 250_000
"""Authenticated senders whose channel (keys, replay window: about 0.5 KB) stays in
memory; a sender beyond it pays an X25519 and a query for its next message."""

SEEN_WRITE_S: Final = 300.0
"""A heartbeat is written to the database when the node's endpoints or session changed,
else at most this often (and for every node at a clean stop): at 100,000 nodes a write
per heartbeat would be 5,000 rows a second."""
REPLICA_ALIVE_S: Final = 1.0
"""How often a replica says it is alive (`keep_replicas`); one silent for three times
that is taken for dead, and the nodes it had are offline until they come to another."""
DETACH_EVERY: Final = 10
"""Every how many `keep_replicas` calls the nodes that went offline here are let go."""
DETACH_BATCH: Final = 1_000
"""Nodes let go of at once, at most (a mass departure is written over several calls
rather than in one transaction that holds up every heartbeat)."""
ORPHAN_NOTICE_EVERY_S: Final = 0.1
ORPHANS_IN_FLIGHT: Final = 500
"""Nodes of a dead replica told to move that have not registered here yet, at most:
the notices go as fast as the moved nodes are served (each costs the survivor a
registration on top of its own nodes' heartbeats), never faster."""
ORPHAN_WAIT_S: Final = 2.0
"""A told node that has not come within this long no longer counts as in flight (it is
offline, or its NAT dropped the notice; it moves at its next heartbeat)."""
PUSH_CHANNEL: Final = "pilotif_push"
"""The notification channel that wakes a replica when another left it notes (pushes for
the nodes it has, trust changes) in the database."""
NOTE_LIFETIME_S: Final = 60.0
"""A note no replica took within this long is dropped (the one it was for died)."""
TRUST_CACHE_S: Final = 10.0
"""How long the relay keeps its answer to "do these two trust each other?" (a change
through any replica clears it at once; one made with `registry admin` shows within)."""
MAX_TRUST_CACHE: Final = 100_000
"""Pairs the relay remembers (all are forgotten when it is full)."""
MAX_RTT_MS: Final = 2_000
"""The largest round trip a node may report; longer ones count as this."""
_TAG_PREFIX: Final = "tag:"
_TRUST_LISTS: Final = ("trusted", "incoming", "outgoing")
TRAFFIC_COUNTERS: Final = frozenset(
    {
        "relayed_packets",
        "relayed_bytes",
        "control_messages",
        "cookie_replies",
        "pushes_forwarded",
        "pushes_received",
        "replica_keepalives",
        "orphans_told",
    }
)
"""Counters of work done; every other counter counts datagrams dropped, by reason."""
_STORE_ERROR_HINTS: Final = {
    NameTaken.code: "choose another --hostname; a name belongs to the first key that takes it",
    NetworkFull.code: "the registry's network has no free address; ask its operator",
    UnknownNode.code: "pilotif find NAME shows the nodes the registry knows",
    NoRequest.code: "pilotif pending lists the requests you can answer",
    "join_key_required": "ask the registry's operator for a join key and pass --join-key",
    "join_key_unknown": "check the key, or ask the registry's operator for a new one",
    "join_key_expired": "ask the registry's operator for a new join key",
    "join_key_revoked": "ask the registry's operator for a new join key",
    "join_key_used": "a one-off key admits one node: ask for another, or a --reusable one",
}

_Push = tuple[bytes, dict[str, Any], Endpoint]
"""A message to seal for a node's key and send to its endpoint."""


class _Refused(Exception):
    """A request we answer with ok=false."""

    def __init__(self, code: str, error: str, hint: str = "") -> None:
        super().__init__(error)
        self.code = code
        self.error = error
        self.hint = hint


@dataclass
class _Request:
    """One authenticated control message being handled."""

    sender: bytes
    record: NodeRecord | None
    message: dict[str, Any]
    source: Endpoint
    now: float
    pushes: list[_Push]
    """Messages to send after the reply, sealed in order so that counters rise."""
    new_session: bool
    """The first message of this node's session that we see (a new `up`, or our restart:
    pushes meant for it meanwhile were not sent)."""
    asked: bool = False
    """Whether trust requests to it wait (read with its record, in one query)."""


class RegistryCore:
    """The registry's logic, without sockets or clocks.

    Inputs: `handle_datagram(data, source, now)` for every datagram received, where
    `now` is wall-clock seconds (it is stored as a node's last-seen time). Output: the
    datagrams to send. `counters` counts drops by reason (`rate_limited`, `malformed`,
    `decrypt_failed`, `replay`, `relay_not_trusted`, ...) and the relayed traffic
    (`relayed_packets`, `relayed_bytes`).
    """

    def __init__(
        self,
        private_key: bytes,
        store: Store,
        *,
        first_counter: int,
        require_join_key: bool = False,
        expire_after_s: float = DEFAULT_EXPIRE_AFTER_S,
        replica: str | None = None,
        relays: tuple[RelayInfo, ...] = (),
    ) -> None:
        self.public_key = _public_key(private_key)
        self.relays = relays
        """The standalone relays nodes are told of (none: this registry relays)."""
        self._ticket_keys = {relay.key: ticket_key(private_key, relay.key) for relay in relays}
        self.replica = replica
        """This replica's name, when several share the database (None: the only one)."""
        self.live_replicas: set[str] = set()
        """The replicas alive at the last `keep_replicas`."""
        self._attached: set[bytes] = set()
        """Nodes whose `replica` in the database names us."""
        self._trust_cache: dict[tuple[bytes, bytes], tuple[bool, float]] = {}
        """Pairs of nodes the relay asked about: whether they trust each other, until when."""
        self._keep_calls = 0
        self._orphans: list[tuple[str, NodeRecord, int | None]] = []
        """Nodes of a dead replica not told yet: (its name, the node, its session)."""
        self._told: dict[bytes, float] = {}
        """Nodes told to move that have not registered here yet: when they were told."""
        self.store = store
        self.require_join_key = require_join_key
        """A closed registry: a new node needs a join key."""
        self.expire_after_s = expire_after_s
        self.counters: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        """Authenticated control requests by op (`other` for an op we do not know)."""
        self.rejects: Counter[str] = Counter()
        """Refused control requests by error code."""
        self._private_key = private_key
        self.counter = first_counter
        """The counter of the latest message sealed (the adapter keeps it rising across
        restarts with a CounterLease)."""
        self._sessions: dict[bytes, int] = {}
        """Each node's session (chosen at its `up`), echoed in what we seal for it so that
        its messages from an earlier session cannot be replayed into this one."""
        self._channels: BoundedLru[bytes, ControlChannel] = BoundedLru(MAX_CHANNELS)
        self._gate = ControlGate(private_key, self.counters)
        self._new_node_limit = PrefixLimit(NEW_NODE_RATES)
        self._join_key_limit = TokenBuckets(JOIN_KEY_USES_PER_S, JOIN_KEY_BURST)
        self._relay_limit = RelayLimit(self.counters)
        self._seen: dict[bytes, tuple[Endpoint, float]] = {}
        self._rtt_ms: dict[bytes, int] = {}
        """Each node's round trip to us as it last reported it (`rtt_ms` of any request)."""
        self._owners: dict[Endpoint, bytes] = {}
        for key, endpoint, last_seen, session in store.all_endpoints():
            self._note_seen(key, parse_endpoint(endpoint), last_seen)
            if session is not None:
                self._sessions[key] = session
        self._ops: dict[str, Callable[[_Request, NodeRecord], dict[str, Any]]] = {
            "lookup": self._lookup,
            "trust_request": self._trust_request,
            "trust_respond": self._trust_respond,
            "untrust": self._untrust,
            "trust_list": self._trust_list,
            "connect": self._connect,
            "relay_tickets": self._relay_tickets,
        }

    # -- datagrams -------------------------------------------------------------------

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        """Everything to send in answer to one datagram from `source`."""
        kind = data[0] if data else None
        if kind == RELAY_TYPE:
            return self._relay(data, source, now)
        if kind == CONTROL_TYPE:
            return self._control(data, source, now)
        if data == REPLICA_KEEPALIVE:
            self.counters["replica_keepalives"] += 1
            return []
        if kind == KEY_REQUEST_TYPE and data == KEY_REQUEST:
            if not self._gate.unproven_allowed(source, now):
                return []
            return [(pack_key_reply(self.public_key), source)]
        self.counters["malformed" if kind == KEY_REQUEST_TYPE else "unknown_type"] += 1
        return []

    def _relay(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        taken = self._relay_limit.take(data, source, now)
        if taken is None:
            return []
        destination, inner = taken
        sender = self._owners.get(source)
        if sender is None:
            return self._gate.unknown_source(source, now)
        target = self._seen.get(destination)
        if target is None or not self._online(sender, now) or not self._online(destination, now):
            self.counters["relay_offline"] += 1
            return []
        if not self._trusted(sender, destination, now):
            self.counters["relay_not_trusted"] += 1
            return []
        self.counters["relayed_packets"] += 1
        self.counters["relayed_bytes"] += len(inner)
        return [(pack_relay(sender, inner), target[0])]

    def _control(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        """The gate's cheap checks first (size, macs, rate limits), then the X25519
        and the AEAD."""
        refused = self._gate.admit(data, source, now)
        if refused is not None:
            return refused
        sealed = data[:-REQUEST_MACS_SIZE]
        try:
            sender = control_sender(sealed)
            channel = self._channels.get(sender)
            fresh = channel is None
            looked_up = None
            if channel is None:
                if not self._gate.new_key_allowed(source, now):
                    return []
                looked_up = self.store.node_and_requests(sender)
                channel = self._new_channel(sender, looked_up[0])
            message = channel.open(sealed)
        except StaleCounter as stale:
            self.counters[stale.reason] += 1
            return self._stale_counter_notice(sender, stale, source)
        except WireError as error:
            self.counters[error.reason] += 1
            return []
        except ValueError:
            self.counters["bad_key"] += 1
            return []
        if fresh:
            self._channels.remember(sender, channel)
        else:
            self._channels.touch(sender)
        # A new channel was made from the node's record: read it once.
        record, asked = looked_up or self.store.node_and_requests(sender)
        if record is not None and self._moved_away(record, channel):
            # It talked to another replica since this channel last heard it: a replay of
            # what it sent there would pass this window. That replica's floor decides.
            channel.restore_counter(record.highest_counter)
            self.counters["stale_counter"] += 1
            notice = StaleCounter(message, record.highest_counter)
            return self._stale_counter_notice(sender, notice, source)
        self.counters["control_messages"] += 1
        session = id_field(message, "session")
        new_session = False
        if session is not None:
            new_session = self._sessions.get(sender) != session
            self._sessions[sender] = session
        request = _Request(sender, record, message, source, now, [], new_session, asked)
        rtt_ms = message.get("rtt_ms")
        if request.record is not None and type(rtt_ms) is int and rtt_ms >= 0:
            self._rtt_ms[sender] = min(rtt_ms, MAX_RTT_MS)
        reply = self._dispatch(request, channel.highest_counter)
        request_id = id_field(message, "id")
        outgoing: list[Outgoing] = []
        if request_id is not None:
            outgoing.append((self._seal_reply(sender, request_id, reply), source))
        for key, payload, endpoint in request.pushes:
            outgoing.append((self._seal(key, payload), endpoint))
        return outgoing

    def _stale_counter_notice(
        self, sender: bytes, stale: StaleCounter, source: Endpoint
    ) -> list[Outgoing]:
        """Tell a node (at its proven address) the counter to go above: after a restart
        from a lower counter it retries at once instead of failing. A replay gets the
        same notice, which names a request the node no longer waits for."""
        request_id = id_field(stale.message, "id")
        if request_id is None:
            return []
        notice = stale_counter_reply(stale.floor)
        session = id_field(stale.message, "session")
        if session is not None:
            notice["session"] = session
        return [(self._seal_reply(sender, request_id, notice), source)]

    def _seal_reply(self, key: bytes, request_id: int, reply: dict[str, Any]) -> bytes:
        try:
            return self._seal(key, {**reply, "id": request_id})
        except ValueError:
            # Only an error echoing a long input can outgrow a datagram.
            self.counters["reply_too_large"] += 1
            short = error_reply("bad_request", "the request is too long to answer", "")
            return self._seal(key, {**short, "id": request_id})

    def _new_channel(self, key: bytes, record: NodeRecord | None) -> ControlChannel:
        """A channel to `key`, refusing counters up to its node's stored floor."""
        channel = ControlChannel(
            self._private_key, key, local_is_registry=True, local_public=self.public_key
        )
        if record is not None:
            channel.restore_counter(record.highest_counter)
        return channel

    def _seal(self, key: bytes, payload: dict[str, Any]) -> bytes:
        channel = self._channels.get(key)
        if channel is None:
            # Only authenticated senders and registered nodes receive messages.
            channel = self._new_channel(key, self.store.node_by_key(key))
            self._channels.remember(key, channel)
        session = self._sessions.get(key)
        if session is not None:
            payload = {"session": session, **payload}
        self.counter += 1
        return channel.seal(payload, self.counter)

    def _dispatch(self, request: _Request, counter: int) -> dict[str, Any]:
        reply = self._answer(request, counter)
        if not reply.get("ok", False):
            self.rejects[str(reply.get("code"))] += 1
        return reply

    def _answer(self, request: _Request, counter: int) -> dict[str, Any]:
        op = request.message["op"]
        self.requests[op if op == "register" or op in self._ops else "other"] += 1
        try:
            if op == "register":
                return self._register(request, counter)
            if request.record is None:
                raise _Refused(
                    "not_registered",
                    "this key is not registered",
                    "send register first (pilotif up does)",
                )
            self._keep_counter_floor(request.record, counter)
            handler = self._ops.get(op)
            if handler is None:
                raise _Refused("unknown_op", f"unknown op {op!r}")
            return {"op": "reply", "ok": True, **handler(request, request.record)}
        except StoreError as error:
            return error_reply(error.code, str(error), _STORE_ERROR_HINTS.get(error.code, ""))
        except _Refused as refused:
            return error_reply(refused.code, refused.error, refused.hint)

    # -- register --------------------------------------------------------------------

    def _register(self, request: _Request, counter: int) -> dict[str, Any]:
        message, key, now = request.message, request.sender, request.now
        self._told.pop(key, None)
        hostname = _hostname(message.get("hostname"))
        tags = _tags(message.get("tags", []))
        lan = _lan_endpoints(message.get("lan", []))
        join_key = _join_key(message.get("join_key"))
        previous = request.record
        if previous is None:
            self._limit_new_node(request.source, join_key, now)
        if (
            previous is not None
            and join_key is None
            and (hostname, tags) == (previous.hostname, previous.tags)
        ):
            # A heartbeat: nothing to write but where the node is (batched below).
            record, new = previous, False
        else:
            try:
                record, new = self.store.register(
                    key,
                    hostname,
                    tags,
                    now,
                    join_key=join_key,
                    require_join_key=self.require_join_key,
                    expired_before=now - self.expire_after_s,
                )
            except StoreError:
                if previous is not None:
                    self._keep_counter_floor(previous, counter)
                raise
        self._keep_counter_floor(record, counter)
        endpoint = format_endpoint(request.source)
        if (
            previous is None
            or request.new_session
            or (previous.endpoint, previous.lan_endpoints) != (endpoint, lan)
            or previous.replica != self.replica
            or now - (previous.last_seen or 0.0) >= SEEN_WRITE_S
        ):
            self.store.mark_seen(
                key,
                endpoint=endpoint,
                lan_endpoints=lan,
                session=self._sessions.get(key),
                now=now,
                replica=self.replica,
            )
        if self.replica is not None:
            self._attached.add(key)
        was_online = self._online(key, now) and self._seen[key][0] == request.source
        self._note_seen(key, request.source, now)
        if new or previous is None:
            log_event(
                "node_registered",
                hostname=hostname,
                ipv4=str(record.ipv4),
                key=encode_key(key),
                network=record.network or "",
            )
        elif (previous.hostname, previous.tags, previous.granted_tags) != (
            hostname,
            tags,
            record.granted_tags,
        ):
            log_event("node_updated", hostname=hostname, was=previous.hostname, tags=",".join(tags))
            # Its peers learn the new name (their DNS follows) and tags.
            for peer in self.store.trusted(key, PENDING_PUSH_LIMIT):
                push = {"op": "trust_changed", "node": self._node(record, now), "trusted": True}
                self._push(peer.public_key, push, now, request.pushes)
        if not was_online:
            log_event("node_online", hostname=hostname, endpoint=endpoint)
        waiting = self.store.incoming(key, PENDING_PUSH_LIMIT) if request.asked else []
        for requester, text in waiting:
            push = {"op": "trust_requested", "node": self._node(requester, now), "message": text}
            self._push(key, push, now, request.pushes)
        return {
            "op": "reply",
            "ok": True,
            "ipv4": str(record.ipv4),
            "ipv6": str(record.ipv6),
            "hostname": record.hostname,
            "public_endpoint": endpoint,
            "network": str(self.store.network),
            "network_name": record.network,
            "granted_tags": list(record.granted_tags),
            "resync": request.new_session,
            **({"replica": self.replica} if self.replica is not None else {}),
            **({"relays": [r.to_json() for r in self.relays]} if self.relays else {}),
        }

    def _keep_counter_floor(self, record: NodeRecord, counter: int) -> None:
        """Keep the node's stored floor above `counter`: it is written COUNTER_LEASE
        ahead, so once every COUNTER_LEASE / 2 messages rather than for each."""
        if counter > record.highest_counter - COUNTER_LEASE // 2:
            self.store.record_counter(record.public_key, counter + COUNTER_LEASE)

    def save(self) -> None:
        """Write what a clean stop keeps for the next start: when each node was last
        seen (the database has it only to SEEN_WRITE_S) and, for each node with a
        channel, the exact highest counter (the next start then accepts its next
        message at once instead of refusing it below the lease)."""
        self.store.touch((key, seen_s) for key, (_, seen_s) in self._seen.items())
        self.store.set_counter_floors(
            (key, channel.highest_counter) for key, channel in self._channels.items()
        )
        if self.replica is not None:
            # Our nodes are offline until they come to another replica.
            self.store.detach(self._attached, self.replica)
            self._attached.clear()

    def keep_replicas(self, now: float) -> None:
        """Say that this replica is alive, learn which others are, and (every
        DETACH_EVERY calls) let go of the nodes that went offline here; every
        REPLICA_ALIVE_S when there are replicas."""
        if self.replica is None:
            return
        self.store.replica_alive(self.replica, now)
        live = self.store.live_replicas(now - 3 * REPLICA_ALIVE_S)
        dead = self.live_replicas - live
        self.live_replicas = live
        if dead and self.replica == min(live):
            # One survivor (the first by name) tells the dead replicas' nodes to come.
            for name in sorted(dead):
                self._orphans += [(name, *node) for node in self.store.nodes_at(name)]
            log_event("replica_dead", replicas=",".join(sorted(dead)), nodes=len(self._orphans))
        self._keep_calls += 1
        if self._keep_calls % DETACH_EVERY == 0:
            self.store.drop_notes(now - NOTE_LIFETIME_S)
            offline = (key for key in self._attached if not self._online(key, now))
            gone = list(itertools.islice(offline, DETACH_BATCH))
            if gone:
                self.store.detach(gone, self.replica)
                self._attached.difference_update(gone)

    def tell_orphans(self, now: float) -> list[Outgoing]:
        """Tell nodes of a dead replica to use us (a node moves at once instead of at
        its next heartbeat), as many as keep ORPHANS_IN_FLIGHT told and not yet here;
        called every ORPHAN_NOTICE_EVERY_S."""
        while self._told and next(iter(self._told.values())) < now - ORPHAN_WAIT_S:
            self._told.pop(next(iter(self._told)))
        outgoing: list[Outgoing] = []
        while self._orphans and len(self._told) < ORPHANS_IN_FLIGHT:
            gone, record, session = self._orphans.pop()
            key = record.public_key
            try:
                endpoint = parse_endpoint(record.endpoint or "")
            except ValueError:
                self.counters["bad_endpoint"] += 1
                continue
            self._told[key] = now
            notice: dict[str, Any] = {"op": "use_replica", "gone": gone}
            if session is not None:
                notice["session"] = session
            if key not in self._channels:
                # The channel its registration will need too, made from what we read.
                self._channels.remember(key, self._new_channel(key, record))
            outgoing.append((self._seal(key, notice), endpoint))
        self.counters["orphans_told"] += len(outgoing)
        return outgoing

    def handle_notifications(self, now: float) -> list[Outgoing]:
        """The database notified us: what other replicas left for us, if anything came
        on PUSH_CHANNEL. What a notification says is never read: any role that may
        connect can send one."""
        if not self.store.notifications():
            return []
        return self.take_notes(now)

    def take_notes(self, now: float) -> list[Outgoing]:
        """What other replicas left for this one in the database: pushes for our nodes,
        and trust changes the relay must not answer from memory."""
        if self.replica is None:
            return []
        outgoing: list[Outgoing] = []
        for text in self.store.take_notes(self.replica):
            try:
                note = json.loads(text)
                if "trust" in note:
                    self._trust_cache.pop(_pair(*(decode_key(k) for k in note["trust"])), None)
                    continue
                key = decode_key(note["key"])
                payload = note["payload"]
            except (ValueError, KeyError, TypeError, InvalidKeyError):
                self.counters["bad_notification"] += 1
                continue
            if not isinstance(payload, dict):
                self.counters["bad_notification"] += 1
                continue
            pushes: list[_Push] = []
            self._push(key, payload, now, pushes, forward=False)
            self.counters["pushes_received"] += len(pushes)
            outgoing += [(self._seal(k, p), endpoint) for k, p, endpoint in pushes]
        return outgoing

    def _limit_new_node(
        self, source: Endpoint, join_key: tuple[str, str] | None, now: float
    ) -> None:
        if not self._new_node_limit.allow(source, now):
            raise _Refused(
                "rate_limited",
                "too many new nodes from this address or its network",
                "try again in a minute",
            )
        if join_key is not None and not self._join_key_limit.allow(join_key[0], now):
            raise _Refused(
                "rate_limited", "too many new nodes with this join key", "try again in a minute"
            )

    def expire(self, now: float) -> None:
        """Remove the nodes not seen for `expire_after_s` (their names and addresses can
        be taken again); call it now and then (the service does every minute)."""
        for node in self.store.expire_nodes(now - self.expire_after_s):
            self._forget(node.public_key)
            log_event("node_expired", hostname=node.hostname, ipv4=str(node.ipv4))

    def _forget(self, key: bytes) -> None:
        seen = self._seen.pop(key, None)
        if seen is not None and self._owners.get(seen[0]) == key:
            del self._owners[seen[0]]
        self._channels.pop(key, None)
        self._sessions.pop(key, None)
        self._rtt_ms.pop(key, None)

    # -- lookups ---------------------------------------------------------------------

    def _lookup(self, request: _Request, node: NodeRecord) -> dict[str, Any]:
        query = request.message.get("query")
        offset = _offset(request.message)
        if not isinstance(query, str):
            raise _Refused("bad_request", "lookup needs a query")
        closed = self.store.closed_networks()
        found = [
            n
            for n in self._find(query.strip(), offset)
            if n.network not in closed or n.network == node.network
        ]
        nodes = [self._node(n, request.now) for n in found]
        return _fit({"nodes": []}, [("nodes", node) for node in nodes], offset, LOOKUP_LIMIT)

    def _find(self, query: str, offset: int) -> list[NodeRecord]:
        if query.startswith(_TAG_PREFIX):
            tag = _tags([query.removeprefix(_TAG_PREFIX)])[0]
            return self.store.nodes_with_tag(tag, LOOKUP_LIMIT + 1, offset)
        if offset:
            return []
        found: NodeRecord | None
        with contextlib.suppress(ValueError):
            address = ip_address(query)
            if isinstance(address, IPv4Address):
                found = self.store.node_by_ipv4(address)
            else:
                found = self.store.node_by_ipv6(address)
            return [] if found is None else [found]
        with contextlib.suppress(InvalidKeyError):
            found = self.store.node_by_key(decode_key(query))
            return [] if found is None else [found]
        found = self.store.node_by_hostname(_hostname(query.removesuffix(".pilot")))
        return [] if found is None else [found]

    def _trust_list(self, request: _Request, node: NodeRecord) -> dict[str, Any]:
        """One page of the node's trusted peers, then requests to it, then its own: read
        from the database from `offset` on, never the whole lists."""
        key, now = request.sender, request.now
        offset = _offset(request.message)
        entries: list[tuple[str, Any]] = []
        start = offset
        for name, total in zip(_TRUST_LISTS, self.store.trust_counts(key), strict=True):
            wanted = TRUST_PAGE_LIMIT + 1 - len(entries)
            if start >= total or wanted <= 0:
                start = max(0, start - total)
                continue
            if name == "trusted":
                entries += [
                    (name, self._node(n, now)) for n in self.store.trusted(key, wanted, start)
                ]
            elif name == "incoming":
                entries += [
                    (name, {"node": self._node(n, now), "message": text})
                    for n, text in self.store.incoming(key, wanted, start)
                ]
            else:
                entries += [
                    (name, self._node(n, now)) for n in self.store.outgoing(key, wanted, start)
                ]
            start = 0
        empty: dict[str, list[Any]] = {name: [] for name in _TRUST_LISTS}
        return _fit(empty, entries, offset, TRUST_PAGE_LIMIT)

    def _relay_tickets(self, request: _Request, node: NodeRecord) -> dict[str, Any]:
        """One page of tickets for one of our relays, a ticket per trusted peer: what the
        node presents to that relay to send through it."""
        key, now = request.sender, request.now
        relay = request.message.get("relay")
        try:
            mac_key = self._ticket_keys.get(decode_key(relay)) if isinstance(relay, str) else None
        except InvalidKeyError:
            mac_key = None
        if mac_key is None:
            raise _Refused("unknown_relay", "this registry lists no such relay")
        offset = _offset(request.message)
        expires = int(now) + TICKET_LIFETIME_S
        peers = self.store.trusted(key, TICKET_PAGE_LIMIT + 1, offset)
        entries = [("tickets", issue_ticket(mac_key, key, p.public_key, expires)) for p in peers]
        return _fit({"tickets": []}, entries, offset, TICKET_PAGE_LIMIT)

    # -- trust -----------------------------------------------------------------------

    def _trust_request(self, request: _Request, node: NodeRecord) -> dict[str, Any]:
        peer = self._peer(request)
        text = request.message.get("message", "")
        if not isinstance(text, str):
            raise _Refused("bad_request", "message must be a string")
        if _json_size(text) > MAX_TRUST_MESSAGE_BYTES:
            raise _Refused(
                "message_too_long",
                "the trust message is too long",
                f"keep it under {MAX_TRUST_MESSAGE_BYTES} bytes",
            )
        outcome = self.store.request_trust(request.sender, peer.public_key, text, request.now)
        if outcome.changed:
            self._trust_changed(node, peer, True, request.now, request.pushes)
        elif outcome.state == "pending":
            log_event("trust_requested", source=node.hostname, target=peer.hostname)
            push = {
                "op": "trust_requested",
                "node": self._node(node, request.now),
                "message": text,
            }
            self._push(peer.public_key, push, request.now, request.pushes)
        return {"state": outcome.state}

    def _trust_respond(self, request: _Request, node: NodeRecord) -> dict[str, Any]:
        peer = self._peer(request)
        approve = request.message.get("approve")
        if not isinstance(approve, bool):
            raise _Refused("bad_request", "approve must be true or false")
        outcome = self.store.respond(request.sender, peer.public_key, approve, request.now)
        if outcome.changed:
            self._trust_changed(node, peer, True, request.now, request.pushes)
        elif not approve:
            log_event("trust_rejected", source=peer.hostname, target=node.hostname)
        return {"state": outcome.state}

    def _untrust(self, request: _Request, node: NodeRecord) -> dict[str, Any]:
        peer = self._peer(request)
        outcome = self.store.untrust(request.sender, peer.public_key)
        if outcome.changed:
            self._trust_changed(node, peer, False, request.now, request.pushes)
        return {"state": outcome.state}

    def _trust_changed(
        self, node: NodeRecord, peer: NodeRecord, trusted: bool, now: float, out: list[_Push]
    ) -> None:
        self._trust_cache.pop(_pair(node.public_key, peer.public_key), None)
        # The other replicas' relays forget what they knew of these two.
        others = self.live_replicas - {self.replica}
        pair = [encode_key(node.public_key), encode_key(peer.public_key)]
        self._tell_replicas(others, {"trust": pair}, now)
        log_event(
            "trust_established" if trusted else "trust_revoked",
            node=node.hostname,
            peer=peer.hostname,
        )
        for one, other in ((node, peer), (peer, node)):
            push = {"op": "trust_changed", "node": self._node(other, now), "trusted": trusted}
            self._push(one.public_key, push, now, out)

    # -- paths -----------------------------------------------------------------------

    def _connect(self, request: _Request, node: NodeRecord) -> dict[str, Any]:
        peer = self._peer(request)
        now = request.now
        if not self.store.is_trusted(node.public_key, peer.public_key):
            raise _Refused(
                "not_trusted",
                f"you and {peer.hostname} do not trust each other",
                f"pilotif handshake {peer.hostname}, then wait for the approval",
            )
        if not self._reachable(peer, now):
            raise _Refused("peer_offline", f"{peer.hostname} is offline")
        if not self._online(node.public_key, now):
            raise _Refused("not_online", "this node has not registered in a while", "retry")
        # Both sides should open their NATs at one moment: the one nearer to us waits
        # for the punch to reach the other (half of each side's reported round trip).
        one_way_ms = {
            key: self._rtt_ms.get(key, 0) / 2 for key in (node.public_key, peer.public_key)
        }
        latest_ms = max(one_way_ms.values())
        for one, other in ((node, peer), (peer, node)):
            push = {
                "op": "punch",
                "node": self._node(other, now),
                "candidates": self._candidates(other),
                "delay_ms": round(latest_ms - one_way_ms[one.public_key]),
            }
            self._push(one.public_key, push, now, request.pushes)
        return {}

    def _candidates(self, node: NodeRecord) -> list[str]:
        seen = self._seen.get(node.public_key)
        if seen is not None:
            public = [format_endpoint(seen[0])]
        else:
            public = [node.endpoint] if node.endpoint is not None else []
        return public + [lan for lan in node.lan_endpoints if lan not in public]

    # -- helpers ---------------------------------------------------------------------

    def _peer(self, request: _Request) -> NodeRecord:
        text = request.message.get("peer")
        try:
            key = decode_key(text) if isinstance(text, str) else None
        except InvalidKeyError:
            key = None
        if key is None:
            raise _Refused("bad_request", "peer must be a base64 public key")
        if key == request.sender:
            raise _Refused("bad_request", "that is this node's own key")
        peer = self.store.node_by_key(key)
        if peer is None:
            raise _Refused("unknown_peer", "no node has this key", "pilotif find NAME")
        return peer

    def _push(
        self,
        key: bytes,
        payload: dict[str, Any],
        now: float,
        out: list[_Push],
        *,
        forward: bool = True,
    ) -> None:
        """Queue a message for a node online here; one online at another replica gets it
        through the database (unless `forward` is off: it came that way)."""
        seen = self._seen.get(key)
        if seen is None or not self._online(key, now):
            if forward:
                self._forward(key, payload, now)
            return
        if key not in self._sessions:
            # It would drop a push without its session; it syncs at its next request.
            self.counters["push_no_session"] += 1
            return
        out.append((key, payload, seen[0]))

    def _trusted(self, key: bytes, other: bytes, now: float) -> bool:
        """Whether two nodes trust each other, as the relay needs it for every packet:
        from memory for TRUST_CACHE_S (a change made through any replica clears it)."""
        pair = _pair(key, other)
        cached = self._trust_cache.get(pair)
        if cached is not None and now < cached[1]:
            return cached[0]
        trusted = self.store.is_trusted(key, other)
        if len(self._trust_cache) >= MAX_TRUST_CACHE:
            self._trust_cache.clear()
        self._trust_cache[pair] = (trusted, now + TRUST_CACHE_S)
        return trusted

    def _forward(self, key: bytes, payload: dict[str, Any], now: float) -> None:
        if self.replica is None:
            return
        record = self.store.node_by_key(key)
        if record is None or record.replica is None or not self._elsewhere(record):
            return
        self._tell_replicas((record.replica,), {"key": encode_key(key), "payload": payload}, now)
        self.counters["pushes_forwarded"] += 1

    def _tell_replicas(self, replicas: Iterable[str], note: dict[str, Any], now: float) -> None:
        """Leave other replicas a note in the database (none: no replicas)."""
        if self.replica is not None:
            text = json.dumps(note, separators=(",", ":"))
            self.store.leave_notes(PUSH_CHANNEL, replicas, text, now)

    def _at_another_replica(self, node: NodeRecord) -> bool:
        """Whether the database says the node talks to another replica than this one."""
        return self.replica is not None and node.replica not in (None, self.replica)

    def _moved_away(self, node: NodeRecord, channel: ControlChannel) -> bool:
        """Whether the node talks to another replica, with counters this channel may not
        have seen (the database's floor is that replica's lease, above them all)."""
        return self._at_another_replica(node) and channel.highest_counter <= node.highest_counter

    def _elsewhere(self, node: NodeRecord) -> bool:
        """Whether the node talks to another replica that is alive."""
        return self._at_another_replica(node) and node.replica in self.live_replicas

    def _reachable(self, node: NodeRecord, now: float) -> bool:
        """Online here, or at another replica that is alive."""
        return self._online(node.public_key, now) or self._elsewhere(node)

    def _note_seen(self, key: bytes, endpoint: Endpoint, now: float) -> None:
        previous = self._seen.get(key)
        if previous is not None and self._owners.get(previous[0]) == key:
            del self._owners[previous[0]]
        self._seen[key] = (endpoint, now)
        self._owners[endpoint] = key

    def nodes_online(self, now: float) -> int:
        """How many nodes have registered within ONLINE_WINDOW_S."""
        return sum(1 for _, seen_s in self._seen.values() if now - seen_s <= ONLINE_WINDOW_S)

    def _online(self, key: bytes, now: float) -> bool:
        seen = self._seen.get(key)
        return seen is not None and now - seen[1] <= ONLINE_WINDOW_S

    def _node(self, node: NodeRecord, now: float) -> dict[str, Any]:
        """A node as others see it; `granted_tags` and `network_name` only where it has
        them (pages hold more nodes without them)."""
        described: dict[str, Any] = {
            "hostname": node.hostname,
            "public_key": encode_key(node.public_key),
            "ipv4": str(node.ipv4),
            "ipv6": str(node.ipv6),
            "tags": list(node.tags),
            "online": self._reachable(node, now),
        }
        if node.granted_tags:
            described["granted_tags"] = list(node.granted_tags)
        if node.network is not None:
            described["network_name"] = node.network
        return described


def _hostname(value: object) -> str:
    if not isinstance(value, str):
        raise _Refused("bad_request", "hostname must be a string")
    try:
        return normalize_hostname(value)
    except HostnameError as error:
        raise _Refused("invalid_hostname", str(error), "pick a DNS label, e.g. my-agent") from None


def _tags(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise _Refused("bad_request", "tags must be a list of strings")
    tags: list[str] = []
    for tag in value:
        try:
            name = normalize_hostname(tag)
        except HostnameError:
            name = ""
        if not name or len(name) > MAX_TAG_CHARS:
            raise _Refused(
                "invalid_tag",
                f"invalid tag {tag!r}",
                f"tags are 1-{MAX_TAG_CHARS} letters, digits and '-'",
            )
        if name not in tags:
            tags.append(name)
    if len(tags) > MAX_TAGS:
        raise _Refused("invalid_tag", f"too many tags ({len(tags)})", f"use at most {MAX_TAGS}")
    return tuple(tags)


def _join_key(value: object) -> tuple[str, str] | None:
    if value is None:
        return None
    parsed = parse_join_key(value) if isinstance(value, str) else None
    if parsed is None:
        raise _Refused(
            "join_key_unknown",
            "that is not a join key (they read pjk_...)",
            _STORE_ERROR_HINTS["join_key_unknown"],
        )
    return parsed


def _lan_endpoints(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Refused("bad_request", "lan must be a list of 'ip:port' strings")
    endpoints: list[str] = []
    for text in value:
        with contextlib.suppress(ValueError):
            endpoint = format_endpoint(parse_endpoint(text))
            if endpoint not in endpoints:
                endpoints.append(endpoint)
    return tuple(endpoints[:MAX_LAN_ENDPOINTS])


def _offset(message: dict[str, Any]) -> int:
    offset = message.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _Refused("bad_request", "offset must be a non-negative integer")
    return offset


def _fit(
    lists: dict[str, list[Any]],
    entries: list[tuple[str, Any]],
    offset: int,
    limit: int | None = None,
) -> dict[str, Any]:
    """`lists` with as many (list name, entry) appended as fit one reply (and `limit`);
    `next_offset` says where the next page starts when some are left."""
    envelope = {
        "op": "reply",
        "ok": True,
        "id": MAX_REQUEST_ID,
        "session": MAX_REQUEST_ID,
        "next_offset": MAX_REQUEST_ID,
    }
    budget = MAX_PAYLOAD_BYTES - _json_size({**envelope, **lists})
    page = {name: list(items) for name, items in lists.items()}
    for index, (name, entry) in enumerate(entries):
        # An entry costs its JSON and at most one separating comma.
        budget -= _json_size(entry) + 1
        if budget < 0 or index == limit:
            return {**page, "next_offset": offset + index}
        page[name].append(entry)
    return page


def _json_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _pair(key: bytes, other: bytes) -> tuple[bytes, bytes]:
    """Two nodes' keys in one order (a trust is mutual)."""
    return (key, other) if key < other else (other, key)
