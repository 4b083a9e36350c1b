"""The front every sealed control message (0x50) passes at the registry and at a relay:
admit (the gate's cheap checks: size, macs, cookie, rate limits), open (a channel per
sender key, the most recently used kept in memory), and seal (one counter that rises
over every message sealed; the shell's CounterLease keeps it rising across restarts).

What a message asks is its owner's business: `open` hands it over as `Opened`, and
`reply` seals the answer. A message whose counter was seen, or lies below the floor, is
answered here with the floor to go above (a node that restarted counts from below).
"""

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pilotif.control.gate import ControlGate, Outgoing
from pilotif.control.wire import (
    CONTROL_TYPE,
    KEY_REQUEST,
    RELAY_TYPE,
    REQUEST_MACS_SIZE,
    ControlChannel,
    StaleCounter,
    WireError,
    control_sender,
    error_reply,
    id_field,
    stale_counter_reply,
)
from pilotif.util.lru import BoundedLru
from pilotif.wg.crypto import loaded
from pilotif.wg.crypto import public_key as _public_key
from pilotif.wg.events import Endpoint

T = TypeVar("T")

_CONTROL_TYPE_BYTE = bytes((CONTROL_TYPE,))
_RELAY_TYPE_BYTE = bytes((RELAY_TYPE,))
NO_FLOOR = -1
"""The counter floor of a sender nothing is known of: every counter is above it."""


@dataclass(frozen=True)
class Opened(Generic[T]):
    """An authentic control message, accepted once."""

    sender: bytes
    channel: ControlChannel
    message: dict[str, Any]
    looked_up: T | None
    """What the owner's lookup said of the sender when its channel was made for this
    message (None: the channel was in memory, nothing was looked up)."""
    renewal: list[Outgoing] = field(default_factory=list)
    """A fresh cookie to send the sender after the answer (its own was due)."""


DatagramHandler = Callable[[bytes, Endpoint, float], list[Outgoing]]
"""What answers a datagram from a source at a time: what to send."""
Lookup = Callable[[bytes], tuple[T, int]]
"""What the owner knows of a sender without a channel in memory, and the counter floor
its new channel starts from."""


class ControlFront(Generic[T]):
    """Admits, opens and seals control messages for one party (the registry, a relay);
    counts what it drops in `counters`. `reply_fields` go into every reply (a relay's
    instance)."""

    def __init__(
        self,
        private_key: bytes,
        counters: Counter[str],
        *,
        first_counter: int,
        max_channels: int,
        lookup: Lookup[T],
        reply_fields: Mapping[str, Any] | None = None,
    ) -> None:
        self.public_key = _public_key(private_key)
        self.counters = counters
        self.counter = first_counter
        """The counter of the latest message sealed."""
        self.gate = ControlGate(private_key, counters)
        self.channels: BoundedLru[bytes, ControlChannel] = BoundedLru(max_channels)
        self.sessions: dict[bytes, int] = {}
        """Each sender's session (chosen at a node's `up`), echoed in what we seal for
        it so that its messages from an earlier session cannot be replayed into this one."""
        self._loaded_key = loaded(private_key)
        self._lookup = lookup
        self._reply_fields = dict(reply_fields or {})

    def open(self, data: bytes, source: Endpoint, now: float) -> Opened[T] | list[Outgoing]:
        """The message a control datagram carries, once the gate admitted it and its
        channel opened it; else what to answer (a cookie reply, a stale counter notice,
        or nothing)."""
        admitted = self.gate.admit(data, source, now)
        if isinstance(admitted, list):
            return admitted
        sealed = data[:-REQUEST_MACS_SIZE]
        try:
            sender = control_sender(sealed)
            if sender not in self.channels:
                busy = self.gate.busy(data, source, now)
                if busy is not None:
                    return busy
            found = self._channel(sender, source, now)
            if found is None:
                return []
            channel, looked_up = found
            message = channel.open(sealed)
        except StaleCounter as stale:
            # Authentic, only below the floor: the channel is kept, so the node's next
            # message (above it) costs no second X25519 and lookup.
            self.counters[stale.reason] += 1
            self.channels.remember(sender, channel)
            return self.stale_notice(sender, channel, stale, source)
        except WireError as error:
            self.counters[error.reason] += 1
            return []
        except ValueError:
            self.counters["bad_key"] += 1
            return []
        self.channels.remember(sender, channel)
        renewal = self.gate.renewal(data, source, now) if admitted.renew else []
        return Opened(sender, channel, message, looked_up, renewal)

    def urgent(self, data: bytes) -> bool:
        """What the shell serves before its backlog, at the registry and at a relay:
        relayed traffic (0x51: a table lookup), key requests (stateless: a storm of
        probes must not stand in the backlog, whose wait says whether the expensive work
        keeps up) and control messages from a sender whose channel we keep (no X25519,
        no lookup; unverified until opened)."""
        if data[:1] == _RELAY_TYPE_BYTE or data == KEY_REQUEST:
            return True
        if data[:1] != _CONTROL_TYPE_BYTE:
            return False
        try:
            return control_sender(data) in self.channels
        except WireError:
            return False

    def _channel(
        self, sender: bytes, source: Endpoint, now: float
    ) -> tuple[ControlChannel, T | None] | None:
        """The sender's channel, and what the lookup said if it was made now; None if a
        new key from `source` may not cost an X25519 now."""
        channel = self.channels.get(sender)
        if channel is not None:
            return channel, None
        if not self.gate.new_key_allowed(source, now):
            return None
        looked_up, floor = self._lookup(sender)
        return self.new_channel(sender, floor), looked_up

    def new_channel(self, key: bytes, floor: int) -> ControlChannel:
        """A channel to `key` that refuses counters up to `floor`."""
        channel = ControlChannel(
            self._loaded_key, key, local_is_registry=True, local_public=self.public_key
        )
        channel.restore_counter(floor)
        return channel

    def stale_notice(
        self, sender: bytes, channel: ControlChannel, stale: StaleCounter, source: Endpoint
    ) -> list[Outgoing]:
        """Tell a node (at its proven address) the counter to go above: after a restart
        from a lower counter it retries at once instead of failing. A replay gets the
        same notice, which names a request the node no longer waits for."""
        answer = stale_counter_reply(stale.floor)
        return self.reply(sender, channel, stale.message, answer, source)

    def reply(
        self,
        sender: bytes,
        channel: ControlChannel,
        request: dict[str, Any],
        answer: dict[str, Any],
        source: Endpoint,
    ) -> list[Outgoing]:
        """The sealed answer to a request, to `source` (none to a request without an id),
        in the request's session (else the sender's)."""
        request_id = id_field(request, "id")
        if request_id is None:
            return []
        session = id_field(request, "session")
        if session is None:
            session = self.sessions.get(sender)
        try:
            sealed = self.seal(channel, self._envelope(answer, request_id, session))
        except ValueError:
            # Only an error echoing a long input can outgrow a datagram.
            self.counters["reply_too_large"] += 1
            short = error_reply("bad_request", "the request is too long to answer", "")
            sealed = self.seal(channel, self._envelope(short, request_id, session))
        return [(sealed, source)]

    def seal(self, channel: ControlChannel, payload: dict[str, Any]) -> bytes:
        """`payload` sealed with the next counter; ValueError if it is too large."""
        self.counter += 1
        return channel.seal(payload, self.counter)

    def _envelope(
        self, answer: dict[str, Any], request_id: int, session: int | None
    ) -> dict[str, Any]:
        payload = {**answer, "id": request_id, **self._reply_fields}
        if session is not None:
            payload["session"] = session
        return payload


class ByType:
    """Hands each datagram to the handler of its type: a relay message (0x51), a control
    message (0x50), or anything else."""

    def __init__(
        self, relay: DatagramHandler, control: DatagramHandler, other: DatagramHandler
    ) -> None:
        self._relay = relay
        self._control = control
        self._other = other

    def __call__(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        kind = data[0] if data else None
        if kind == RELAY_TYPE:
            return self._relay(data, source, now)
        if kind == CONTROL_TYPE:
            return self._control(data, source, now)
        return self._other(data, source, now)
