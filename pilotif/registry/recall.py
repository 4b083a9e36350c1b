"""The registry's return, told to the nodes it knew (sans-IO).

A registry that starts (a restart, an upgrade, the end of an outage) knows its nodes
from the database, but the nodes that lost it only probe it, less and less often the
longer it was away (node/registration.py: down to about one probe in PROBE_MAX_S). So
it tells them: the 36-byte key answer (0x52), which a node accepts from an address it
probed, and which brings it back at once. It tells them at the pace it takes them back:
at most RECALL_IN_FLIGHT told and not back yet (a node told that is not back within
RECALL_WAIT_S no longer counts: it left, or its mapping did), none while it is behind
(ControlGate), those silent longest first. A node that came back by itself since the
start, or that would have expired, is not told. Nothing else moves: the answer is what
any key request gets, and it goes only to addresses nodes registered from.
"""

from collections import Counter
from collections.abc import Callable
from typing import Final

from pilotif.wg.events import Endpoint

RECALL_EVERY_S: Final = 0.02
"""How often the service asks whom to tell next."""
RECALL_IN_FLIGHT: Final = 256
"""Nodes told and not back yet, at most: what a return costs (about 0.25 ms of X25519
and writes each) times this stays well under the queue delay that makes the registry
behind (100 ms), so the registration each answer brings is not answered busy."""
RECALL_WAIT_S: Final = 2.0
"""How long a node told counts as on its way."""

Known = tuple[bytes, Endpoint, float]
"""A node the database knows: its key, the endpoint it last registered from, when."""
SeenSince = Callable[[bytes, float], bool]
"""Whether a node (by key) registered at or after a time."""


class Recall:
    """Whom to tell that the registry is back, and when; see the module docstring."""

    def __init__(self, known: list[Known], counters: Counter[str]) -> None:
        self._left = sorted(known, key=lambda node: node[2], reverse=True)
        """Nodes not told yet, the one silent longest last (popped first)."""
        self._told: dict[bytes, float] = {}
        """Nodes told and not back yet: when they were told."""
        self._started_s: float | None = None
        self._counters = counters

    @property
    def done(self) -> bool:
        """Whether every node known has been told (or came back, or would expire), and
        each told came back or waited RECALL_WAIT_S."""
        return not self._left and not self._told

    def to_tell(
        self, now: float, seen_since: SeenSince, *, forget_before: float, behind: bool
    ) -> list[Endpoint]:
        """The endpoints to send the key answer to now: as many as keep RECALL_IN_FLIGHT
        on their way (none while `behind`); nodes last seen before `forget_before` would
        expire and are not told."""
        if self._started_s is None:
            self._started_s = now
        for key, told_s in list(self._told.items()):
            if seen_since(key, told_s):
                self._counters["recalled_back"] += 1
                del self._told[key]
            elif told_s < now - RECALL_WAIT_S:
                del self._told[key]
        if behind:
            return []
        endpoints: list[Endpoint] = []
        while self._left and len(self._told) < RECALL_IN_FLIGHT:
            key, endpoint, last_seen = self._left.pop()
            if last_seen < forget_before or seen_since(key, self._started_s):
                continue
            self._told[key] = now
            endpoints.append(endpoint)
        self._counters["recalled"] += len(endpoints)
        return endpoints
