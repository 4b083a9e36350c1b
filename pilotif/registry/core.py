"""The registry's logic: `RegistryCore` answers datagrams (sans-IO: bytes, a source and
the time in, datagrams to send out); `pilotif.registry.server` runs it on a UDP socket.

The core authenticates control messages (0x50) per sender key through the control front
(pilotif.control.front), registers nodes (`register`), carries trust requests and
answers and coordinates hole punching (`trust`), answers lookups and hands out relay
tickets (`lookups`), relays WireGuard ciphertext between nodes that trust each other
(0x51, pilotif.control.forwarder with `routes`) and tells a node the registry key
(0x52). With replicas (`replicas`) it also passes pushes through the database.
Peer input is hostile: whatever is malformed, unauthenticated, replayed, not allowed or
over a rate limit is dropped and counted in `counters`, never logged per packet.
docs/CONTROL_PROTOCOL.md is the contract with the node.
"""

from collections import Counter
from typing import Any, Final

from pilotif.control.forwarder import Forwarder
from pilotif.control.front import NO_FLOOR, ByType, ControlFront, Opened
from pilotif.control.gate import Outgoing
from pilotif.control.probe_answer import answering_probes
from pilotif.control.relay_info import RelayInfo
from pilotif.control.wire import (
    KEY_REQUEST,
    KEY_REQUEST_TYPE,
    REPLICA_KEEPALIVE,
    StaleCounter,
    error_reply,
    id_field,
    pack_key_reply,
    parse_endpoint,
)
from pilotif.registry.directory import Directory
from pilotif.registry.lookups import Lookups
from pilotif.registry.presence import Presence
from pilotif.registry.recall import Known, Recall
from pilotif.registry.register import DEFAULT_EXPIRE_AFTER_S, Registration, keep_counter_floor
from pilotif.registry.replicas import PushNote, Replicas
from pilotif.registry.requests import STORE_ERROR_HINTS, Handler, Push, Refused, Request
from pilotif.registry.routes import TrustedRoutes
from pilotif.registry.store import NodeRecord, Store, StoreError
from pilotif.registry.trust import TrustOps
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint

MAX_CHANNELS: Final = 250_000
"""Authenticated senders whose channel (keys, replay window: about 0.5 KB) stays in
memory; a sender beyond it pays an X25519 and a query for its next message."""
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
        "recalled",
        "recalled_back",
        "recalled_by_probe",
    }
)
"""Counters of work done; every other counter counts datagrams dropped, by reason."""

_LookedUp = tuple[NodeRecord | None, bool]
"""A sender's record and whether trust requests to it wait (one query)."""


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
        self.store = store
        self.relays = relays
        """The standalone relays nodes are told of (none: this registry relays)."""
        self.replica = replica
        """This replica's name, when several share the database (None: the only one)."""
        self.expire_after_s = expire_after_s
        self.counters: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        """Authenticated control requests by op (`other` for an op we do not know)."""
        self.rejects: Counter[str] = Counter()
        """Refused control requests by error code."""
        self._front: ControlFront[_LookedUp] = ControlFront(
            private_key,
            self.counters,
            first_counter=first_counter,
            max_channels=MAX_CHANNELS,
            lookup=self._look_up,
        )
        self.public_key = self._front.public_key
        self._presence = Presence()
        known: list[Known] = []
        for key, endpoint, last_seen, session, at_replica in store.all_endpoints():
            where = parse_endpoint(endpoint)
            self._presence.note_seen(key, where, last_seen)
            if session is not None:
                self._front.sessions[key] = session
            known.append((key, where, last_seen, at_replica))
        self._recall: Recall | None = Recall(known, self.counters) if known else None
        """Whom to tell that we are back (None: every node known was told); with
        replicas, the nodes no other replica alive has."""
        self._key_reply = pack_key_reply(self.public_key)
        self._replicas = Replicas(store, replica, self.counters)
        self.routes = TrustedRoutes(self._presence, store)
        """Who the relay carries datagrams for, and its trust cache."""
        forwarder = Forwarder(self.counters, self._front.gate, self.routes)
        self._by_type = ByType(
            forwarder.forward,
            self._control,
            answering_probes(self._front.gate, self.counters, self._other),
        )
        directory = Directory(
            store, self._presence, self._replicas, self._front.sessions, self.counters
        )
        self._directory = directory
        self._registration = Registration(
            directory,
            self._front.sessions,
            relays=relays,
            require_join_key=require_join_key,
            expire_after_s=expire_after_s,
        )
        self._ops: dict[str, Handler] = {
            **self._registration.handlers(),
            **Lookups(directory, private_key, relays).handlers(),
            **TrustOps(directory, self.routes).handlers(),
        }

    @property
    def counter(self) -> int:
        """The counter of the latest message sealed (the adapter keeps it rising across
        restarts with a CounterLease)."""
        return self._front.counter

    @property
    def live_replicas(self) -> set[str]:
        """The replicas alive at the last `keep_replicas`."""
        return self._replicas.live

    # -- datagrams -------------------------------------------------------------------

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
        """A replica keepalive, a key request, or junk."""
        kind = data[0] if data else None
        if data == REPLICA_KEEPALIVE:
            self.counters["replica_keepalives"] += 1
            return []
        if kind == KEY_REQUEST_TYPE and data == KEY_REQUEST:
            if not self._front.gate.answers_key_request(now):
                # A node away (or starting) registers once answered: while we fall
                # behind, its silence costs least, and it asks again about a second on.
                return []
            if not self._front.gate.unproven_allowed(source, now):
                return []
            if not self._probe_answered(source, now):
                return []
            return [(self._key_reply, source)]
        self.counters["malformed" if kind == KEY_REQUEST_TYPE else "unknown_type"] += 1
        return []

    def _probe_answered(self, source: Endpoint, now: float) -> bool:
        """Whether a key request from `source` is answered by the recall's rules (it
        brings a registration back: registry/recall.py)."""
        recall, owner = self._recall, self._presence.owner(source)
        if recall is None or not recall.started or owner is None:
            return True
        return recall.answers_probe(owner, now, self._front.gate.queue_delay(now))

    def _look_up(self, sender: bytes) -> tuple[_LookedUp, int]:
        """A sender without a channel: its record (read once for the whole message),
        and the counter floor stored for it."""
        looked_up = self.store.node_and_requests(sender)
        record = looked_up[0]
        return looked_up, NO_FLOOR if record is None else record.highest_counter

    def _control(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        opened = self._front.open(data, source, now)
        if isinstance(opened, list):
            return opened
        sender, channel, message = opened.sender, opened.channel, opened.message
        record, asked = opened.looked_up or self.store.node_and_requests(sender)
        if record is not None and self._replicas.moved_away(record, channel):
            # It talked to another replica since this channel last heard it: a replay of
            # what it sent there would pass this window. That replica's floor decides.
            channel.restore_counter(record.highest_counter)
            self.counters["stale_counter"] += 1
            stale = StaleCounter(message, record.highest_counter)
            return self._front.stale_notice(sender, channel, stale, source)
        self.counters["control_messages"] += 1
        request = self._request(opened, record, asked, source, now)
        reply = self._dispatch(request, channel.highest_counter)
        outgoing = self._front.reply(sender, channel, message, reply, source)
        return outgoing + opened.renewal + self._sealed(request.pushes)

    def _request(
        self,
        opened: Opened[_LookedUp],
        record: NodeRecord | None,
        asked: bool,
        source: Endpoint,
        now: float,
    ) -> Request:
        """The request an authentic message makes; notes its session and round trip."""
        sender, message = opened.sender, opened.message
        session = id_field(message, "session")
        new_session = False
        if session is not None:
            new_session = self._front.sessions.get(sender) != session
            self._front.sessions[sender] = session
        if record is not None:
            self._presence.report_rtt(sender, message.get("rtt_ms"))
        return Request(sender, record, message, source, now, [], new_session, asked)

    def _sealed(self, pushes: list[Push]) -> list[Outgoing]:
        return [(self._seal(key, payload), endpoint) for key, payload, endpoint in pushes]

    def _seal(self, key: bytes, payload: dict[str, Any]) -> bytes:
        """A message to a node, in its session."""
        channel = self._front.channels.get(key)
        if channel is None:
            # Only authenticated senders and registered nodes receive messages.
            record = self.store.node_by_key(key)
            floor = NO_FLOOR if record is None else record.highest_counter
            channel = self._front.new_channel(key, floor)
            self._front.channels.remember(key, channel)
        session = self._front.sessions.get(key)
        if session is not None:
            payload = {"session": session, **payload}
        return self._front.seal(channel, payload)

    def _dispatch(self, request: Request, counter: int) -> dict[str, Any]:
        reply = self._answer(request, counter)
        if not reply.get("ok", False):
            self.rejects[str(reply.get("code"))] += 1
        return reply

    def _answer(self, request: Request, counter: int) -> dict[str, Any]:
        op = request.message["op"]
        self.requests[op if op == "register" or op in self._ops else "other"] += 1
        try:
            if op == "register":
                return self._registration.register(request, counter)
            if request.record is None:
                raise Refused(
                    "not_registered",
                    "this key is not registered",
                    "send register first (pilotif up does)",
                )
            keep_counter_floor(self.store, request.record, counter)
            handler = self._ops.get(op)
            if handler is None:
                raise Refused("unknown_op", f"unknown op {op!r}")
            return {"op": "reply", "ok": True, **handler(request, request.record)}
        except StoreError as error:
            return error_reply(error.code, str(error), STORE_ERROR_HINTS.get(error.code, ""))
        except Refused as refused:
            return error_reply(refused.code, str(refused), refused.hint)

    # -- housekeeping ----------------------------------------------------------------

    def save(self) -> None:
        """Write what a clean stop keeps for the next start: when each node was last
        seen (the database has it only to SEEN_WRITE_S) and, for each node with a
        channel, the exact highest counter (the next start then accepts its next
        message at once instead of refusing it below the lease)."""
        self.store.touch(self._presence.last_seen())
        self.store.set_counter_floors(
            (key, channel.highest_counter) for key, channel in self._front.channels.items()
        )
        self._replicas.save()

    def keep_replicas(self, now: float) -> None:
        """Say that this replica is alive, learn which others are, and (every
        DETACH_EVERY calls) let go of the nodes that went offline here; every
        REPLICA_ALIVE_S when there are replicas."""
        self._replicas.keep(now, self._presence.online)

    def tell_orphans(self, now: float) -> list[Outgoing]:
        """Tell nodes of a dead replica to use us (a node moves at once instead of at
        its next heartbeat), as many as keep ORPHANS_IN_FLIGHT told and not yet here;
        called every ORPHAN_NOTICE_EVERY_S."""
        outgoing: list[Outgoing] = []
        for orphan in self._replicas.orphans_to_tell(now):
            key = orphan.record.public_key
            notice: dict[str, Any] = {"op": "use_replica", "gone": orphan.gone}
            if orphan.session is not None:
                notice["session"] = orphan.session
            if key not in self._front.channels:
                # The channel its registration will need too, made from what we read.
                channel = self._front.new_channel(key, orphan.record.highest_counter)
                self._front.channels.remember(key, channel)
            outgoing.append((self._seal(key, notice), orphan.endpoint))
        self.counters["orphans_told"] += len(outgoing)
        return outgoing

    @property
    def recalling(self) -> bool:
        """Whether nodes known from before we started are still to be told we are back."""
        return self._recall is not None

    def recall(self, now: float) -> list[Outgoing]:
        """Tell the next nodes known from before we started that we are back (the key
        answer to the probes they send while we are away: registry/recall.py); called
        every RECALL_EVERY_S."""
        recall, live = self._recall, self._replicas.live
        if recall is None or (self.replica is not None and not live):
            # With replicas: not before we know which are alive (keep_replicas).
            return []
        endpoints = recall.to_tell(
            now,
            self._presence.seen_since,
            forget_before=now - self.expire_after_s,
            queue_delay_s=self._front.gate.queue_delay(now),
            elsewhere=lambda replica: self._recalled_elsewhere(replica, live),
        )
        if recall.done:
            self._recall = None
            log_event(
                "recall_done",
                told=self.counters["recalled"] + self.counters["recalled_by_probe"],
                back=self.counters["recalled_back"],
            )
        return [(self._key_reply, endpoint) for endpoint in endpoints]

    def _recalled_elsewhere(self, replica: str | None, live: set[str]) -> bool:
        """Whether a node whose record names `replica` is another replica's to have or
        to recall. Ours: a node of our predecessor (a replica on our host and port,
        alive or not: it may still count as alive a moment after its restart), and of
        a replica that died and was not restarted (a replica on its host and port), if
        we are the first alive by name (as for orphans). Another's: a node of a replica
        alive, or of one whose restart is alive."""
        if replica is None or self.replica is None or replica == self.replica:
            return False
        address, mine = _host_port(replica), _host_port(self.replica)
        if address == mine:
            return False
        if replica in live or any(_host_port(other) == address for other in live):
            return True
        others = (name for name in live if _host_port(name) != mine)
        return min(others, default=self.replica) < self.replica

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
        outgoing: list[Outgoing] = []
        for note in self._replicas.take_notes():
            if not isinstance(note, PushNote):
                self.routes.trust_changed(*note.pair)
                continue
            pushes: list[Push] = []
            self._directory.push(note.key, note.payload, now, pushes, forward=False)
            self.counters["pushes_received"] += len(pushes)
            outgoing += self._sealed(pushes)
        return outgoing

    def expire(self, now: float) -> None:
        """Remove the nodes not seen for `expire_after_s` (their names and addresses can
        be taken again); call it now and then (the service does every minute)."""
        for node in self.store.expire_nodes(now - self.expire_after_s):
            self._presence.forget(node.public_key)
            self._front.channels.pop(node.public_key, None)
            self._front.sessions.pop(node.public_key, None)
            log_event("node_expired", hostname=node.hostname, ipv4=str(node.ipv4))

    def nodes_online(self, now: float) -> int:
        """How many nodes have registered within ONLINE_WINDOW_S."""
        return self._presence.nodes_online(now)


def _host_port(replica: str) -> str:
    """The host and port of a replica's name (HOST:PORT:PID): where its restart runs."""
    return replica.rpartition(":")[0]
