"""The cheap checks every sealed control message passes before any X25519: its size,
mac1 (keyed by our public key), mac2 (the cookie that proves the sender's address;
without it only a cookie reply goes back, smaller than the message) and the rate limits
per address. The registry and the standalone relays both answer through them.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Final

from pilotif.control.ratelimit import TokenBuckets
from pilotif.control.wire import (
    CONTROL_HEADER_SIZE,
    COOKIE_CHALLENGE_INDEX,
    COOKIE_RENEWAL_INDEX,
    MAX_PAYLOAD_BYTES,
    REGISTRY_COOKIE_TYPE,
    RELAY_SOURCE_UNKNOWN,
    REQUEST_MACS_SIZE,
    pack_busy,
)
from pilotif.wg.constants import AEAD_TAG_SIZE
from pilotif.wg.cookie import RenewingCookieChecker, packed_address, source_bytes
from pilotif.wg.events import Endpoint
from pilotif.wg.handshake import LocalIdentity

CONTROL_RATE_PER_S: Final = 50.0
CONTROL_BURST: Final = 100.0
"""Control messages from one proven ip:port (many nodes may share a NAT's address)."""
NEW_CHANNELS_PER_S: Final = 5_000.0
NEW_CHANNELS_BURST: Final = 5_000.0
"""The most channels opened (an X25519 and a lookup each) a second, from every source
together, however idle the socket: a ceiling for the database's sake. Below it, what
decides is QUEUE_TARGET_S. Past either, a proven request from a key without a channel is
answered busy instead of served late or dropped by the kernel."""
QUEUE_TARGET_S: Final = 0.1
QUEUE_INTERVAL_S: Final = 0.1
"""A registry whose datagrams all waited more than QUEUE_TARGET_S in its socket's queue
over a QUEUE_INTERVAL_S (the least wait above the target: a standing queue, not a burst,
as CoDel tells them apart) is behind for the next interval: it serves the nodes it has
channels with, answers all but a few new keys busy, cheaply, and leaves all but a few
key requests (the probes of nodes that lost it, which register once answered)
unanswered (BEHIND_NEW_CHANNELS_PER_S, BEHIND_KEY_ANSWERS_PER_S). So the rate it opens
channels at is what this machine manages, not a constant (a fixed 1,500 a second was
too many on a slower machine and too few for a returning fleet on this one)."""
BEHIND_NEW_CHANNELS_PER_S: Final = 100.0
BEHIND_KEY_ANSWERS_PER_S: Final = 200.0
BEHIND_BURST: Final = 20.0
"""While behind, what still goes through: new channels, and answers to key requests (the
nodes that then register). Shedding all of them let a registry whose queue stood for
another reason (its heartbeats, a starved CPU) turn every returning node away for as
long as that lasted: nodes that had given up probed unanswered for minutes."""
BUSY_RETRY_MS: Final = 2_000
"""The pause a busy notice asks for (the node adds its jitter)."""
NEW_KEY_RATE_PER_S: Final = 20.0
NEW_KEY_BURST: Final = 50.0
"""Control messages from keys without a channel (each costs an X25519, and at the
registry a query), per address group: one host that proves many ports, or owns a /64,
gets what one port gets."""
UNPROVEN_RATE_PER_S: Final = 50.0
UNPROVEN_BURST: Final = 200
"""Answers (cookie replies, key answers) to one address whose ports are not proven: the
most an off-path spoofer can reflect at one victim, at no more bytes than it sent."""

_MAX_CONTROL_DATAGRAM: Final = (
    CONTROL_HEADER_SIZE + MAX_PAYLOAD_BYTES + AEAD_TAG_SIZE + REQUEST_MACS_SIZE
)
_MIN_CONTROL_DATAGRAM: Final = CONTROL_HEADER_SIZE + AEAD_TAG_SIZE + REQUEST_MACS_SIZE
_IPV6_GROUP_BYTES: Final = 8
"""Rate limits count an IPv6 source by its /64, as one host may own all of it."""
_IPV4_BITS: Final = 32

Outgoing = tuple[bytes, Endpoint]
"""A datagram to send and where to."""


@dataclass(frozen=True)
class Admitted:
    """A message the gate lets through to be opened."""

    renew: bool
    """Its cookie came from the secret before the current one and is due for renewal
    (RenewingCookieChecker.cookie_age): if it is authentic, its answer brings a fresh
    one (ControlGate.renewal)."""


def address_group(source: Endpoint) -> bytes:
    """What per-address limits count: an IPv4 address, or an IPv6 /64."""
    return packed_address(source[0])[:_IPV6_GROUP_BYTES]


@dataclass(frozen=True)
class PrefixRate:
    """A rate for each network of one size: `rate_per_s` a second, up to `burst`, per
    IPv`version` network of `prefix_bits`."""

    version: int
    prefix_bits: int
    rate_per_s: float
    burst: float


class PrefixLimit:
    """Token buckets per network at several prefix lengths (a /64, its /48, its /32):
    a source is allowed when every network it is in has a token left, and then one is
    taken from each. One who owns a wide prefix gets what its widest network allows,
    not what its many small ones would add up to."""

    def __init__(self, rates: tuple[PrefixRate, ...]) -> None:
        self._levels = [(rate, TokenBuckets(rate.rate_per_s, rate.burst)) for rate in rates]

    def allow(self, source: Endpoint, now: float) -> bool:
        """Take a token for `source` from each of its networks if all have one."""
        packed = packed_address(source[0])
        address, bits = int.from_bytes(packed, "big"), len(packed) * 8
        version = 4 if bits == _IPV4_BITS else 6
        keys = [
            (buckets, address >> (bits - rate.prefix_bits))
            for rate, buckets in self._levels
            if rate.version == version
        ]
        if any(buckets.tokens(key, now) < 1.0 for buckets, key in keys):
            return False
        for buckets, key in keys:
            buckets.allow(key, now)
        return True


class ControlGate:
    """Admits control messages worth opening; counts what it refuses in `counters`."""

    def __init__(self, private_key: bytes, counters: Counter[str]) -> None:
        self.counters = counters
        self._cookies = RenewingCookieChecker(
            LocalIdentity.from_private_key(private_key), reply_type=REGISTRY_COOKIE_TYPE
        )
        self._control_limit = TokenBuckets(CONTROL_RATE_PER_S, CONTROL_BURST)
        self._unproven_limit = TokenBuckets(UNPROVEN_RATE_PER_S, UNPROVEN_BURST)
        self._new_key_limit = TokenBuckets(NEW_KEY_RATE_PER_S, NEW_KEY_BURST)
        self._new_channels = TokenBuckets(NEW_CHANNELS_PER_S, NEW_CHANNELS_BURST)
        self._behind_channels = TokenBuckets(BEHIND_NEW_CHANNELS_PER_S, BEHIND_BURST)
        self._behind_key_answers = TokenBuckets(BEHIND_KEY_ANSWERS_PER_S, BEHIND_BURST)
        self._least_wait = 0.0
        """The least a datagram waited in the socket's queue in the current interval."""
        self._interval_end = float("-inf")
        self._behind_until = float("-inf")
        self._latest_wait = (0.0, float("-inf"))
        """The wait of the latest datagram served from the backlog, and when."""

    def admit(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing] | Admitted:
        """Admitted if the message may be opened; else what to answer (a cookie reply, or
        nothing)."""
        if len(data) > _MAX_CONTROL_DATAGRAM:
            self.counters["too_large"] += 1
            return []
        if len(data) < _MIN_CONTROL_DATAGRAM:
            self.counters["malformed"] += 1
            return []
        if not self._cookies.check_mac1(data):
            self.counters["bad_mac1"] += 1
            return []
        address = source_bytes(source)
        age = self._cookies.cookie_age(data, address, now)
        if age is None:
            if not self.unproven_allowed(source, now):
                return []
            self.counters["cookie_replies"] += 1
            reply = self._cookies.create_reply(data, COOKIE_CHALLENGE_INDEX, address, now)
            return [(reply, source)]
        if not self._control_limit.allow(source, now):
            self.counters["rate_limited"] += 1
            return []
        return Admitted(renew=age == "due")

    def renewal(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        """A fresh cookie for the sender of an authentic message whose cookie is due
        for renewal (Admitted.renew), to send after the answer: 64 bytes to the address
        its cookie proved."""
        self.counters["cookie_renewals"] += 1
        reply = self._cookies.create_reply(data, COOKIE_RENEWAL_INDEX, source_bytes(source), now)
        return [(reply, source)]

    def waited(self, delay_s: float, now: float) -> None:
        """A datagram about to be handled at `now` waited `delay_s` in the socket's queue."""
        self._latest_wait = (delay_s, now)
        if now < self._interval_end:
            self._least_wait = min(self._least_wait, delay_s)
            return
        # The interval that ended: did even its shortest wait stand above the target?
        if self._least_wait > QUEUE_TARGET_S:
            self._behind_until = now + QUEUE_INTERVAL_S
        self._least_wait = delay_s
        self._interval_end = now + QUEUE_INTERVAL_S

    def drained(self, now: float) -> None:
        """The backlog emptied at `now`: no queue stands (a wait of 0, as CoDel counts
        it)."""
        self.waited(0.0, now)

    def queue_delay(self, now: float) -> float:
        """How long the latest datagram served from the backlog waited (0 if none was
        served in the last QUEUE_INTERVAL_S: no queue)."""
        delay_s, at = self._latest_wait
        return delay_s if now - at <= QUEUE_INTERVAL_S else 0.0

    def behind(self, now: float) -> bool:
        """Whether the last interval's datagrams all waited more than QUEUE_TARGET_S."""
        return now < self._behind_until

    def busy(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing] | None:
        """For a proven message from a key without a channel: None if a new channel may
        be opened now (we keep up, and the ceiling allows it), else the busy notice to
        answer (counted)."""
        if self.behind(now) and not self._behind_channels.allow(None, now):
            self.counters["busy_behind"] += 1
        elif self._new_channels.allow(None, now):
            return None
        self.counters["busy"] += 1
        return [(pack_busy(data, BUSY_RETRY_MS), source)]

    def answers_key_request(self, now: float) -> bool:
        """Whether a key request (a node's probe, or its first word) is answered now:
        always while we keep up, at BEHIND_KEY_ANSWERS_PER_S while behind (counted)."""
        if not self.behind(now) or self._behind_key_answers.allow(None, now):
            return True
        self.counters["key_request_behind"] += 1
        return False

    def new_key_allowed(self, source: Endpoint, now: float) -> bool:
        """Whether a message from a key without a channel may cost an X25519 now, by the
        address group of its (proven) source; counted if not."""
        if self._new_key_limit.allow(address_group(source), now):
            return True
        self.counters["new_key_rate_limited"] += 1
        return False

    def unknown_source(self, source: Endpoint, now: float) -> list[Outgoing]:
        """The answer to a relay message from an address no node is known at: the 4-byte
        notice that makes the node announce itself again (as every unproven answer,
        limited per address)."""
        self.counters["relay_unknown_source"] += 1
        return [(RELAY_SOURCE_UNKNOWN, source)] if self.unproven_allowed(source, now) else []

    def unproven_allowed(self, source: Endpoint, now: float) -> bool:
        """Whether an answer may go to an address that proved nothing (counted if not)."""
        if self._unproven_limit.allow(address_group(source), now):
            return True
        self.counters["rate_limited"] += 1
        return False
