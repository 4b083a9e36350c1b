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
registrations the answers bring are then served, not answered busy.

Only the nodes online when the registry stopped are told (seen within
RECALL_SEEN_WITHIN_S of the latest seen: the database has a node's time only to
SEEN_WRITE_S), those seen last first: one gone for long would hold a place in the window
for nothing. A probe from a node still to be told counts as telling it: answered while
the window has room, else left unanswered (the node is told soon). A node that came
back by itself since the start, that would have expired, or that is another replica's
to have or to recall, is not told. Nothing else moves: the answer is what any key
request gets, and it goes only to addresses nodes registered from.
"""

from collections import Counter
from collections.abc import Callable
from typing import Final

from pilotif.control.gate import QUEUE_INTERVAL_S, QUEUE_TARGET_S
from pilotif.registry.presence import ONLINE_WINDOW_S
from pilotif.registry.register import SEEN_WRITE_S
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
RECALL_SEEN_WITHIN_S: Final = SEEN_WRITE_S + ONLINE_WINDOW_S
"""Nodes seen this long before the latest seen were offline when the registry stopped."""
RECALL_PASSES_PER_CALL: Final = 4 * RECALL_MAX_WINDOW
"""The most nodes passed over (told by a probe, back, expired, another replica's) in one
call: the loop's other work has its turn."""

Known = tuple[bytes, Endpoint, float, str | None]
"""A node the database knows: its key, the endpoint it last registered from, when, and
the replica it talked to (None: the only registry, or none)."""
SeenSince = Callable[[bytes, float], bool]
"""Whether a node (by key) registered at or after a time."""
Elsewhere = Callable[[str | None], bool]
"""Whether a node whose record names that replica (None: none) is another replica's to
have or to recall."""


class Recall:
    """Whom to tell that the registry is back, and when; see the module docstring."""

    def __init__(self, known: list[Known], counters: Counter[str]) -> None:
        latest = max((node[2] for node in known), default=0.0)
        online = [node for node in known if node[2] >= latest - RECALL_SEEN_WITHIN_S]
        self._left = sorted(online, key=lambda node: node[2])
        """Nodes not told yet, the one seen last last (popped first); those a probe told
        meanwhile are passed over."""
        self._waiting = {node[0] for node in online}
        """The keys of `_left` not told yet."""
        self._told: dict[bytes, float] = {}
        """Nodes told and not back yet: when they were told."""
        self._started_s: float | None = None
        self._counters = counters
        self.window = float(RECALL_FIRST_WINDOW)
        """How many nodes may be told and not back yet."""
        self._cut_s = float("-inf")

    @property
    def started(self) -> bool:
        """Whether the recall began (the service asked whom to tell)."""
        return self._started_s is not None

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
        passes = 0
        while self._left and len(self._told) < int(self.window):
            passes += 1
            if passes > RECALL_PASSES_PER_CALL:
                break
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
