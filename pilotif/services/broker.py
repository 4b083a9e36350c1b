"""Publish/subscribe: each node is the broker for its own topics (as in Pilot Protocol).
Its trusted peers (and the node itself) publish to it and subscribe to it on
EVENTS_PORT; a subscriber gets, one JSON line each, exactly the events published after it
subscribed whose topic matches its pattern.

Topics are 1-128 characters of letters, digits and `._/-` (`jobs/build-7`); a pattern may
also hold `*`, which matches any run of characters (`jobs/*`, `*`).

Memory is bounded by bytes, not by events: an event is encoded once into its line, and
every matching subscription queues that same line (no copy, no parsed event), at most
SUBSCRIBER_QUEUE_BYTES each. A subscriber that falls behind loses its oldest lines and
is told how many (`events_dropped`) before the ones that survived. A peer holds at most
MAX_SUBSCRIPTIONS_PER_PEER subscriptions, all peers MAX_SUBSCRIPTIONS, so one publish
is written out a bounded number of times.
"""

import asyncio
import fnmatch
import re
import time
from collections import deque
from typing import Any, Final

from pilotif.services.limits import Quota
from pilotif.services.wire import encode

PUBLISHED: Final = "published"
EVENTS_DROPPED: Final = "events_dropped"
MAX_TOPIC_CHARS: Final = 128
SUBSCRIBER_QUEUE_BYTES: Final = 512 * 1024
MAX_SUBSCRIPTIONS_PER_PEER: Final = 8
MAX_SUBSCRIPTIONS: Final = 128
_TOPIC = re.compile(r"[A-Za-z0-9._/-]{1,128}")
_PATTERN = re.compile(r"[A-Za-z0-9._/*-]{1,128}")


class TopicError(ValueError):
    """A topic or pattern with characters it may not hold."""


class TooManySubscriptions(Exception):
    """A subscription past MAX_SUBSCRIPTIONS_PER_PEER or MAX_SUBSCRIPTIONS."""


def check_topic(topic: object, *, pattern: bool = False) -> str:
    """A topic (or, with `pattern`, a pattern); TopicError saying what one looks like."""
    rule = _PATTERN if pattern else _TOPIC
    if not isinstance(topic, str) or not rule.fullmatch(topic):
        allowed = "letters, digits and ._/-" + (" and *" if pattern else "")
        raise TopicError(f"a topic is 1-{MAX_TOPIC_CHARS} characters: {allowed}")
    return topic


class Subscription:
    """One subscriber's queue of event lines, at most `max_bytes` of them."""

    def __init__(self, pattern: str, peer: str, max_bytes: int) -> None:
        self.pattern = pattern
        self.peer = peer
        self._max_bytes = max_bytes
        self._lines: deque[bytes] = deque()
        self.queued_bytes = 0
        """The bytes of the lines waiting to be written."""
        self._dropped = 0
        self._ready = asyncio.Event()

    def _offer(self, line: bytes) -> int:
        """Queue a line, dropping the oldest past the byte cap; how many were dropped."""
        self._lines.append(line)
        self.queued_bytes += len(line)
        dropped = 0
        while self.queued_bytes > self._max_bytes:
            self.queued_bytes -= len(self._lines.popleft())
            dropped += 1
        self._dropped += dropped
        self._ready.set()
        return dropped

    async def get(self) -> bytes:
        """The next line to write, waiting for one; an `events_dropped` line first after
        a loss."""
        while not self._lines and not self._dropped:
            self._ready.clear()
            await self._ready.wait()
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return encode({"time": time.time(), "event": EVENTS_DROPPED, "count": count})
        line = self._lines.popleft()
        self.queued_bytes -= len(line)
        return line


class Broker:
    """The topics of one node; see the module docstring."""

    def __init__(self, queue_bytes: int = SUBSCRIBER_QUEUE_BYTES) -> None:
        self._queue_bytes = queue_bytes
        self._subscriptions: set[Subscription] = set()
        self._quota = Quota(MAX_SUBSCRIPTIONS_PER_PEER, MAX_SUBSCRIPTIONS)
        self.dropped = 0
        """Lines dropped from subscribers' queues, since the start."""

    def subscribe(self, pattern: str, peer: str) -> Subscription:
        """Events whose topic matches `pattern`, from now on; TooManySubscriptions past
        the caps."""
        if not self._quota.take(peer):
            raise TooManySubscriptions(
                f"at most {MAX_SUBSCRIPTIONS_PER_PEER} subscriptions a peer,"
                f" {MAX_SUBSCRIPTIONS} in all"
            )
        subscription = Subscription(pattern, peer, self._queue_bytes)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """End a subscription (ending one twice is harmless)."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
            self._quota.give_back(subscription.peer)

    def publish(self, topic: str, data: Any, sender: str) -> int:
        """Queue an event for every subscription that matches its topic; how many did."""
        return self.deliver(topic, self.line(topic, data, sender))

    @staticmethod
    def line(topic: str, data: Any, sender: str) -> bytes:
        """An event's line, as subscribers get it (raises what `encode` raises for data no
        line can carry: pilotif.services.wire refuses such requests first)."""
        event = {"time": time.time(), "event": PUBLISHED, "topic": topic, "data": data}
        return encode(event | {"sender": sender})

    def deliver(self, topic: str, line: bytes) -> int:
        """Queue an event's line for every subscription whose pattern matches its topic;
        how many did."""
        delivered = 0
        for subscription in self._subscriptions:
            if matches(subscription.pattern, topic):
                self.dropped += subscription._offer(line)
                delivered += 1
        return delivered


def matches(pattern: str, topic: str) -> bool:
    """Whether a topic matches a pattern (`*` is any run of characters; patterns hold no
    other wildcard: check_topic allows none)."""
    return fnmatch.fnmatchcase(topic, pattern)
