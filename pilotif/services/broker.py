"""Publish/subscribe: each node is the broker for its own topics (as in Pilot Protocol).
Its trusted peers (and the node itself) publish to it and subscribe to it on
EVENTS_PORT; a subscriber gets, one JSON line each, exactly the events published after it
subscribed whose topic matches its pattern.

Topics are 1-128 characters of letters, digits and `._/-` (`jobs/build-7`); a pattern may
also hold `*`, which matches any run of characters (`jobs/*`, `*`). Fan-out is the
node's event bus (pilotif.observe.events): each subscriber has a bounded queue, and one
that falls behind loses its oldest events and is told how many (`events_dropped`).
"""

import fnmatch
import re
from typing import Any, Final

from pilotif.observe.events import EventBus, Subscription

PUBLISHED: Final = "published"
MAX_TOPIC_CHARS: Final = 128
_TOPIC = re.compile(r"[A-Za-z0-9._/-]{1,128}")
_PATTERN = re.compile(r"[A-Za-z0-9._/*-]{1,128}")


class TopicError(ValueError):
    """A topic or pattern with characters it may not hold."""


def check_topic(topic: object, *, pattern: bool = False) -> str:
    """A topic (or, with `pattern`, a pattern); TopicError saying what one looks like."""
    rule = _PATTERN if pattern else _TOPIC
    if not isinstance(topic, str) or not rule.fullmatch(topic):
        allowed = "letters, digits and ._/-" + (" and *" if pattern else "")
        raise TopicError(f"a topic is 1-{MAX_TOPIC_CHARS} characters: {allowed}")
    return topic


class Broker:
    """The topics of one node; see the module docstring."""

    def __init__(self) -> None:
        self._bus = EventBus()
        self._patterns: dict[Subscription, str] = {}

    def subscribe(self, pattern: str) -> Subscription:
        """Events whose topic matches `pattern`, from now on (filter with `matches`)."""
        subscription = self._bus.subscribe()
        self._patterns[subscription] = pattern
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._patterns.pop(subscription, None)
        subscription.close()

    def publish(self, topic: str, data: Any, sender: str) -> int:
        """Hand an event to every subscriber; how many subscriptions match its topic."""
        self._bus.publish(PUBLISHED, topic=topic, data=data, sender=sender)
        return sum(1 for pattern in self._patterns.values() if matches(pattern, topic))


def matches(pattern: str, topic: str) -> bool:
    """Whether a topic matches a pattern (`*` is any run of characters; patterns hold no
    other wildcard: check_topic allows none)."""
    return fnmatch.fnmatchcase(topic, pattern)
