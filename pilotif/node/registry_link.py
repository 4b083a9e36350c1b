"""The node's link to the registry, sans-IO: sealed requests with retries, replies matched
by id, pushes, and the registry key asked for on first contact.

Inputs: `request`/`fetch_key`/`probe` (what to send), `receive(data, now)` for every
0x50/0x52/0x54/0x55 datagram from the registry's address, and `handle_timer(now)` at or after
`next_timer()`. Outputs: `outgoing` (datagrams for the registry) and the `LinkInput`s
that `receive` and `handle_timer` return. No sockets, no clocks.
"""

import os
import random
from dataclasses import dataclass
from typing import Any, Final

from pilotif.control.wire import (
    BUSY_TYPE,
    CONTROL_TYPE,
    COOKIE_RENEWAL_INDEX,
    COUNTER_LEASE,
    KEY_REQUEST,
    KEY_REQUEST_TYPE,
    REGISTRY_COOKIE_TYPE,
    RELAY_SOURCE_UNKNOWN,
    REPLICA_KEEPALIVE,
    REQUEST_MACS_SIZE,
    ControlChannel,
    WireError,
    parse_busy,
    request_mac1,
    unpack_key_reply,
)
from pilotif.wg.cookie import RENEWED_COOKIE_LIFETIME_S, CookieGenerator
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import InvalidKeyError, decode_key
from pilotif.wg.messages import MessageError, parse_cookie_reply

REGISTER_INTERVAL_S: Final = 20.0
"""How often a node registers again (its heartbeat)."""
REQUEST_ATTEMPTS: Final = 5
REQUEST_RETRY_S: Final = 1.0
BUSY_JITTER: Final = 0.5
"""A busy registry's pause is stretched or shrunk by up to this fraction at random, so
that the nodes it turned away at once do not come back at once."""
FAILOVER_AFTER_ATTEMPTS: Final = 2
"""With several registries, a request unanswered this many times goes to the next one
(its attempts go on counting: every registry silent ends in GaveUp as with one)."""
KEY_FETCH_ID: Final = 0
"""The request id under which the key request (which carries no id) is tracked."""
_ID_BITS: Final = 48
"""Request ids start at a random point of this range each session, so a reply recorded
in an earlier session matches nothing we wait for."""
_SESSION_LIMIT: Final = 2**63
"""Sessions fit a signed 64-bit integer, as ids and counters do."""


@dataclass(frozen=True)
class Reply:
    """The registry answered request `request_id`."""

    request_id: int
    message: dict[str, Any]


@dataclass(frozen=True)
class Push:
    """A message from the registry that answers nothing (trust_requested, punch, ...)."""

    message: dict[str, Any]


@dataclass(frozen=True)
class KeyAnswer:
    """The registry said its key (first contact, or a probe's answer after a silence)."""

    key: bytes
    source: Endpoint | None = None
    """The registry address that answered (None: the current one)."""


@dataclass(frozen=True)
class GaveUp:
    """Request `request_id` (KEY_FETCH_ID: the key request) got no answer after every
    attempt."""

    request_id: int


@dataclass(frozen=True)
class RelaySourceUnknown:
    """The registry got a relay message of ours from an address we did not register from
    (our NAT mapping changed)."""


@dataclass(frozen=True)
class SwitchedRegistry:
    """The registry we talked to went silent; requests go to `endpoint` from now on."""

    endpoint: Endpoint
    previous: Endpoint


@dataclass(frozen=True)
class MoveAsked:
    """The replica at `endpoint` says replica `gone` died (its nodes are to use it)."""

    endpoint: Endpoint
    gone: str


LinkInput = Reply | Push | KeyAnswer | GaveUp | RelaySourceUnknown | SwitchedRegistry | MoveAsked


@dataclass
class _Pending:
    payload: dict[str, Any] | None
    """The request (None: the key request)."""
    attempts: int
    retry_at_s: float
    sent_s: float
    """When it was first sent (its reply measures the round trip if it was sent once)."""
    mac1: bytes = b""
    """The mac1 of its latest transmission (what a busy notice about it echoes)."""
    to: Endpoint | None = None
    """The registry address it goes to, whichever we talk to (a dual-stack node's
    `family_endpoint` to our address of the other family); None: the current one."""


class _Replica:
    """What we keep per registry address: its replay window and its cookie."""

    def __init__(self, private_key: bytes, registry_key: bytes) -> None:
        self.channel = ControlChannel(private_key, registry_key, local_is_registry=False)
        # The registry renews a cookie before it lapses (RenewingCookieChecker).
        self.cookies = CookieGenerator(registry_key, RENEWED_COOKIE_LIFETIME_S)


class RegistryLink:
    """Requests to and messages from the registry (one address, or several replicas of
    one registry that share its key); see the module docstring."""

    def __init__(
        self,
        private_key: bytes,
        endpoint: Endpoint,
        registry_key: bytes | None,
        *,
        first_counter: int,
        first_id: int | None = None,
        replicas: tuple[Endpoint, ...] = (),
    ) -> None:
        self._private_key = private_key
        self.endpoints = (endpoint, *(r for r in replicas if r != endpoint))
        """The registry's addresses: `endpoint`, then its other `replicas`."""
        self.endpoint = endpoint
        """The registry requests go to now."""
        self.registry_key = registry_key
        self._replicas: dict[Endpoint, _Replica] = {}
        """Per registry address: each replica counts its own messages, so each has its
        own replay window (and cookie)."""
        if registry_key:
            self.use_key(registry_key)
        self._counter = first_counter
        self._next_id = (
            first_id if first_id is not None else 1 + int.from_bytes(os.urandom(6)) % 2**_ID_BITS
        )
        self.session = int.from_bytes(os.urandom(8)) % _SESSION_LIMIT
        """Chosen anew each start; every request carries it and the registry echoes it
        in all it seals for us, so its messages to an earlier session are refused."""
        self._pending: dict[int, _Pending] = {}
        self._probed: set[Endpoint] = set()
        """The registry addresses a probe went to since the last answer (what a key
        reply may come from)."""
        self._probes_sent = 0
        self.outgoing: list[tuple[bytes, Endpoint]] = []
        self.rtt_s: float | None = None
        """The round trip of the latest request answered at its first attempt."""
        self.dropped = 0
        self.busy = 0
        """Busy notices taken (a registry that shed our requests)."""

    @property
    def counter(self) -> int:
        """The counter of the latest request sealed (kept rising across restarts by the
        adapter's CounterLease)."""
        return self._counter

    def use_key(self, key: bytes) -> None:
        """Seal for, and accept only, the registry with this key from now on."""
        self.registry_key = key
        self._replicas = {}

    def _replica(self, endpoint: Endpoint) -> _Replica | None:
        if self.registry_key is None:
            return None
        replica = self._replicas.get(endpoint)
        if replica is None:
            replica = self._replicas[endpoint] = _Replica(self._private_key, self.registry_key)
        return replica

    # -- outbound ----------------------------------------------------------------

    def fetch_key(self, now: float) -> None:
        """Ask the registry for its key; a KeyAnswer or GaveUp(KEY_FETCH_ID) follows."""
        self._pending[KEY_FETCH_ID] = _Pending(None, 0, now, now)
        self._transmit(KEY_FETCH_ID, now)

    def probe(self) -> None:
        """Ask whether the registry is back: one key request (KEY_REQUEST, 36 bytes, that
        the registry answers statelessly with as many), no retry (the caller paces
        probes). With replicas, each probe goes to the next address in turn; a KeyAnswer
        names the one that answered."""
        endpoint = self.endpoints[self._probes_sent % len(self.endpoints)]
        self._probes_sent += 1
        self._probed.add(endpoint)
        self.outgoing.append((KEY_REQUEST, endpoint))

    def request(
        self, op: str, fields: dict[str, Any], now: float, *, to: Endpoint | None = None
    ) -> int:
        """Send a request (retried until answered, to `to` if given, never failing over);
        its id, which the Reply echoes."""
        if self.registry_key is None:
            raise RuntimeError("RegistryLink.request before the registry key is known")
        request_id = self._next_id
        self._next_id += 1
        if self.rtt_s is not None:
            # The registry times punches from it (both sides open their NATs at once).
            fields = {**fields, "rtt_ms": round(self.rtt_s * 1000)}
        payload = {"op": op, "id": request_id, "session": self.session, **fields}
        self._pending[request_id] = _Pending(payload, 0, now, now, to=to)
        self._transmit(request_id, now)
        return request_id

    def _transmit(self, request_id: int, now: float) -> None:
        pending = self._pending[request_id]
        pending.attempts += 1
        pending.retry_at_s = now + REQUEST_RETRY_S
        if pending.payload is None:
            self.outgoing.append((KEY_REQUEST, self.endpoint))
            return
        endpoint = pending.to or self.endpoint
        replica = self._replica(endpoint)
        assert replica is not None
        self._counter += 1
        message = bytearray(replica.channel.seal(pending.payload, self._counter))
        message += bytes(REQUEST_MACS_SIZE)
        replica.cookies.add_macs(message, now)
        pending.mac1 = request_mac1(message)
        self.outgoing.append((bytes(message), endpoint))

    def keep_others_open(self) -> None:
        """Send the replicas we do not talk to a keepalive (REPLICA_KEEPALIVE): our NAT
        then lets them reach us, to tell us to move if ours dies."""
        for endpoint in self.endpoints:
            if endpoint != self.endpoint:
                self.outgoing.append((REPLICA_KEEPALIVE, endpoint))

    def next_timer(self) -> float | None:
        """When the next retry is due, if any request waits."""
        return min((p.retry_at_s for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> list[LinkInput]:
        """Retry what is due; GaveUp for requests out of attempts. With several
        registries, a request silent FAILOVER_AFTER_ATTEMPTS times moves every waiting
        request to the next registry (SwitchedRegistry)."""
        inputs: list[LinkInput] = []
        for request_id, pending in list(self._pending.items()):
            if pending.retry_at_s > now:
                continue
            if pending.attempts >= REQUEST_ATTEMPTS:
                del self._pending[request_id]
                inputs.append(GaveUp(request_id))
            elif (
                pending.attempts % FAILOVER_AFTER_ATTEMPTS == 0
                and len(self.endpoints) > 1
                and pending.to is None
            ):
                inputs.append(self._switch(now))
            else:
                self._transmit(request_id, now)
        return inputs

    def _switch(self, now: float) -> SwitchedRegistry:
        """Send everything that waits to the next registry, at once."""
        following = (self.endpoints.index(self.endpoint) + 1) % len(self.endpoints)
        return self.switch_to(self.endpoints[following], now)

    def switch_to(self, endpoint: Endpoint, now: float) -> SwitchedRegistry:
        """Talk to the replica at `endpoint` from now on; what waits goes there at once."""
        previous = self.endpoint
        self.endpoint = endpoint
        # Above the floor the silent replica may have stored for us: the next one holds us
        # to it, and would refuse our first message otherwise.
        self._counter += COUNTER_LEASE
        for request_id in self._pending:
            self._transmit(request_id, now)
        return SwitchedRegistry(self.endpoint, previous)

    # -- inbound -----------------------------------------------------------------

    def receive(self, data: bytes, now: float, source: Endpoint | None = None) -> list[LinkInput]:
        """A 0x50, 0x52, 0x54 or 0x55 datagram from a registry address (`source`; None:
        the current one); what it means, if anything (forged, replayed and unexpected
        datagrams are dropped and counted).

        A cookie reply (0x54) to our latest request sends every waiting request again at
        once, now with a mac2 that proves our address; a renewal (beside an answer) is
        only kept.
        """
        source = self.endpoint if source is None else source
        if data[:1] == bytes((REGISTRY_COOKIE_TYPE,)):
            if source in self.endpoints:
                self._take_cookie(data, now, source)
            return []
        if data[:1] == bytes((BUSY_TYPE,)):
            if source == self.endpoint:
                self._busy(data, now)
            return []
        if data == RELAY_SOURCE_UNKNOWN:
            return [RelaySourceUnknown()]
        if data[:1] == bytes((KEY_REQUEST_TYPE,)):
            return self._key_reply(data, source)
        replica = self._replica(source) if source in self.endpoints else None
        if replica is None or data[:1] != bytes((CONTROL_TYPE,)):
            self.dropped += 1
            return []
        try:
            message = replica.channel.open(data)
        except WireError:
            self.dropped += 1
            return []
        if message.get("session") != self.session:
            self.dropped += 1
            return []
        gone = message.get("gone")
        if message.get("op") == "use_replica" and isinstance(gone, str):
            return [MoveAsked(source, gone)] if source != self.endpoint else []
        if message.get("op") != "reply":
            return [Push(message)]
        request_id = message.get("id")
        if not isinstance(request_id, int) or request_id not in self._pending:
            self.dropped += 1
            return []
        pending = self._pending[request_id]
        floor = message.get("floor")
        if message.get("code") == "stale_counter" and type(floor) is int:
            # We count from below what the registry saw (a restart with an older
            # counter file, or a clock that ran ahead in an older version): go above.
            self._counter = max(self._counter, floor)
            self._send_again(request_id, now)
            return []
        del self._pending[request_id]
        if pending.attempts == 1 and pending.to is None:
            self.rtt_s = now - pending.sent_s
        return [Reply(request_id, message)]

    def _key_reply(self, data: bytes, source: Endpoint) -> list[LinkInput]:
        """The registry's key, if we asked (a key request waits, or a probe went there)."""
        if KEY_FETCH_ID not in self._pending and source not in self._probed:
            self.dropped += 1
            return []
        try:
            key = unpack_key_reply(data)
        except WireError:
            self.dropped += 1
            return []
        if source in self._probed:
            # The registry is back from a silence, perhaps restarted: it then holds us to
            # the floor it stored, up to COUNTER_LEASE above what it saw. Going above it
            # spares the stale-counter round trip (and its work) as the fleet returns.
            self._counter += COUNTER_LEASE
        self._pending.pop(KEY_FETCH_ID, None)
        self._probed.clear()
        return [KeyAnswer(key, source)]

    def _take_cookie(self, data: bytes, now: float, source: Endpoint) -> None:
        """A cookie from the registry address `source`: the requests waiting for that
        address go again with it (a reply to none of them is dropped)."""
        try:
            reply = parse_cookie_reply(data, REGISTRY_COOKIE_TYPE)
        except MessageError:
            self.dropped += 1
            return
        replica = self._replica(source)
        if replica is None or not replica.cookies.consume_reply(reply, now):
            self.dropped += 1
            return
        if reply.receiver == COOKIE_RENEWAL_INDEX:
            return
        for request_id, pending in self._pending.items():
            if pending.payload is not None and (pending.to or self.endpoint) == source:
                self._send_again(request_id, now)

    def _busy(self, data: bytes, now: float) -> None:
        """The registry is busy: the request the notice names waits the pause it asks
        for, with jitter, before its next attempt (this one is not spent: the registry
        is there). A notice naming no request we wait for is dropped."""
        try:
            retry_after_ms, mac1 = parse_busy(data)
        except WireError:
            self.dropped += 1
            return
        for pending in self._pending.values():
            if pending.payload is not None and pending.mac1 == mac1:
                pending.attempts -= 1
                jitter = 1 + BUSY_JITTER * (2 * random.random() - 1)
                pending.retry_at_s = now + retry_after_ms / 1000 * jitter
                self.busy += 1
                return
        self.dropped += 1

    def _send_again(self, request_id: int, now: float) -> None:
        """Send a request at once without spending an attempt: the registry answered the
        last one without reading it (a cookie reply, a stale counter)."""
        pending = self._pending[request_id]
        pending.attempts -= 1
        pending.sent_s = now
        self._transmit(request_id, now)


class Errands:
    """The requests the node makes on its own behalf (registration, trust list, tickets,
    probe rounds), by id: their op. A reply or a silence whose id is not here answers a
    caller's request."""

    def __init__(self, link: RegistryLink) -> None:
        self._link = link
        self._ops: dict[int, str] = {}

    def send(
        self, op: str, fields: dict[str, Any], now: float, *, to: Endpoint | None = None
    ) -> None:
        """Send a request of the node's own (none while the registry's key is unknown),
        to the registry address `to` if given."""
        if self._link.registry_key is not None:
            self._ops[self._link.request(op, fields, now, to=to)] = op

    def pop(self, request_id: int) -> str | None:
        """The op of an errand that was answered or gave up (None: not an errand)."""
        return self._ops.pop(request_id, None)

    def waiting(self, op: str) -> bool:
        """Whether an errand of this op waits for its answer."""
        return op in self._ops.values()


def message_key(value: object) -> bytes | None:
    """A base64 key from a registry message, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return decode_key(value)
    except InvalidKeyError:
        return None


def message_strings(value: object) -> list[str]:
    """The strings of a list from a message ([] for anything else)."""
    return [str(item) for item in value if isinstance(item, str)] if isinstance(value, list) else []


def refusal(reply: dict[str, Any]) -> tuple[str, str, str]:
    """A refusal's code, error and hint."""
    return (
        str(reply.get("code", "error")),
        str(reply.get("error", "the registry refused the request")),
        str(reply.get("hint", "")),
    )
