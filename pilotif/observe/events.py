"""The event bus: what happened to peers, paths, trust and the registry link, as small
dicts handed to whoever listens (`pilotif events`, the webhook).

Publishing never blocks and never raises: each subscriber has a bounded queue, and one
that falls behind loses its oldest events and is told how many with an `events_dropped`
event before the ones that survived.
"""

import asyncio
import time
from typing import Any, Protocol

Event = dict[str, Any]
"""{"time": unix seconds, "event": kind, ...fields}."""

EVENT_KINDS = frozenset(
    {
        "peer_up",
        "peer_down",
        "path_changed",
        "trust_requested",
        "trust_approved",
        "trust_revoked",
        "registry_lost",
        "registry_regained",
        "message_received",
        "file_received",
    }
)
"""What the daemon publishes; subscribers may also see `events_dropped`."""
EVENTS_DROPPED = "events_dropped"
SUBSCRIBER_QUEUE_EVENTS = 1024
"""How many events a subscriber may fall behind before it loses the oldest."""


class Publish(Protocol):
    """Something events can be published to: `publish("peer_up", peer="beta")`."""

    def __call__(self, kind: str, /, **fields: object) -> None: ...


def no_publish(kind: str, /, **fields: object) -> None:
    """A Publish that drops every event (for code running without a bus)."""


class Subscription:
    """One listener's bounded queue of events; `close` ends it."""

    def __init__(self, bus: "EventBus", limit: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(limit)
        self._dropped = 0

    def _offer(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        """The next event, waiting for one; an `events_dropped` notice first after a loss."""
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return {"time": time.time(), "event": EVENTS_DROPPED, "count": count}
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events."""
        self._bus.unsubscribe(self)


class EventBus:
    """Fan-out of published events to every current subscriber."""

    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []

    def publish(self, kind: str, /, **fields: object) -> None:
        """Hand an event to every subscriber now; never blocks, never raises."""
        if not self._subscribers:
            return
        event: Event = {"time": time.time(), "event": kind, **fields}
        for subscription in self._subscribers:
            subscription._offer(event)

    def subscribe(self, limit: int = SUBSCRIBER_QUEUE_EVENTS) -> Subscription:
        """A new subscription that sees every event published from now on."""
        subscription = Subscription(self, limit)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription (closing one twice is harmless)."""
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)
