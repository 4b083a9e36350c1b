"""The registry's return, told to the nodes it knew (sans-IO).

A registry that starts (a restart, an upgrade, the end of an outage) knows its nodes
from the database, but the nodes that lost it only probe it, less and less often the
longer it was away (node/registration.py: down to about one probe in PROBE_MAX_S). So
it tells them: the 36-byte key answer, which a node accepts from an address it probed,
and which brings it back at once. It tells them at the pace it takes them back, as TCP
paces a window: a window of nodes told and not back yet (a node told that is not back
within RECALL_WAIT_S no longer counts: it left, or its mapping did), which starts at
RECALL_FIRST_WINDOW, grows by one for each node back, and halves (once per
RECALL_CUT_EVERY_S) when what waits in the registry's backlog waited more than
RECALL_QUEUE_TARGET_S, half the delay at which the registry sheds (ControlGate): the
registrations the answers bring are then served, not answered busy. Those silent longest
are told first. A probe from a node still to be told counts as telling it: answered
while the window has room, else left unanswered (the node is told soon). A node that
came back by itself since the start, that would have expired, or that another replica
alive has, is not told. Nothing else moves: the answer
is what any key request gets, and it goes only to addresses nodes registered from.
"""

from collections import Counter
from collections.abc import Callable
from typing import Final

from pilotif.control.gate import QUEUE_INTERVAL_S, QUEUE_TARGET_S
from pilotif.wg.events import Endpoint

RECALL_EVERY_S: Final = 0.02
"""How often the service asks whom to tell next."""
RECALL_FIRST_WINDOW: Final = 16
"""Nodes told at first, before any came back."""
RECALL_MAX_WINDOW: Final = 2048
"""The most nodes told and not back yet."""
RECALL_QUEUE_TARGET_S: Final = QUEUE_TARGET_S / 2
"""A backlog wait above this halves the window."""
RECALL_CUT_EVERY_S: Final = QUEUE_INTERVAL_S
"""At most one halving per interval (the backlog's wait answers a change that late)."""
RECALL_WAIT_S: Final = 2.0
"""How long a node told counts as on its way."""

Known = tuple[bytes, Endpoint, float, str | None]
"""A node the database knows: its key, the endpoint it last registered from, when, and
the replica it talked to (None: the only registry, or none)."""
SeenSince = Callable[[bytes, float], bool]
"""Whether a node (by key) registered at or after a time."""
Elsewhere = Callable[[str | None], bool]
"""Whether the replica named (None: none) is another one, alive."""


class Recall:
    """Whom to tell that the registry is back, and when; see the module docstring."""

    def __init__(self, known: list[Known], counters: Counter[str]) -> None:
        self._left = sorted(known, key=lambda node: node[2], reverse=True)
        """Nodes not told yet, the one silent longest last (popped first); those a probe
        told meanwhile are passed over."""
        self._waiting = {node[0] for node in known}
        """The keys of `_left` not told yet."""
        self._told: dict[bytes, float] = {}
        """Nodes told and not back yet: when they were told."""
        self._started_s: float | None = None
        self._counters = counters
        self.window = float(RECALL_FIRST_WINDOW)
        """How many nodes may be told and not back yet."""
        self._cut_s = float("-inf")

    @property
    def done(self) -> bool:
        """Whether every node known has been told (or came back, or would expire), and
        each told came back or waited RECALL_WAIT_S."""
        return not self._left and not self._told

    def answers_probe(self, key: bytes, now: float, queue_delay_s: float) -> bool:
        """Whether to answer a probe (a key request) from the node `key`: yes unless it
        is still to be told and the window is full or the backlog stands (its probe then
        tells it, counted as told)."""
        if key not in self._waiting:
            return True
        if queue_delay_s > RECALL_QUEUE_TARGET_S or len(self._told) >= int(self.window):
            self._counters["key_request_recall_waits"] += 1
            return False
        self._waiting.discard(key)
        self._told[key] = now
        self._counters["recalled_by_probe"] += 1
        return True

    def to_tell(
        self,
        now: float,
        seen_since: SeenSince,
        *,
        forget_before: float,
        queue_delay_s: float,
        elsewhere: Elsewhere = lambda replica: False,
    ) -> list[Endpoint]:
        """The endpoints to send the key answer to now: as many as the window allows
        (none while the backlog waited `queue_delay_s` > RECALL_QUEUE_TARGET_S); nodes
        last seen before `forget_before` would expire, and those `elsewhere` has, are not
        told."""
        if self._started_s is None:
            self._started_s = now
        for key, told_s in list(self._told.items()):
            if seen_since(key, told_s):
                self._counters["recalled_back"] += 1
                self.window = min(self.window + 1, RECALL_MAX_WINDOW)
                del self._told[key]
            elif told_s < now - RECALL_WAIT_S:
                del self._told[key]
        if queue_delay_s > RECALL_QUEUE_TARGET_S:
            if now >= self._cut_s + RECALL_CUT_EVERY_S:
                self._cut_s = now
                self.window = max(self.window / 2, 1.0)
            return []
        endpoints: list[Endpoint] = []
        while self._left and len(self._told) < int(self.window):
            key, endpoint, last_seen, replica = self._left.pop()
            if key not in self._waiting:
                continue
            self._waiting.discard(key)
            if last_seen < forget_before or seen_since(key, self._started_s) or elsewhere(replica):
                continue
            self._told[key] = now
            endpoints.append(endpoint)
        self._counters["recalled"] += len(endpoints)
        return endpoints
