"""Several registry replicas on one PostgreSQL database: which replicas are alive, the
nodes this one has, the notes replicas leave each other in the database (pushes for a
node at another replica, trust changes its relay must not answer from memory), and the
nodes of a replica that died, told to come here. A lone registry (no name) does none
of it."""

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from pilotif.control.wire import ControlChannel, parse_endpoint
from pilotif.registry.store import NodeRecord, Store
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

REPLICA_ALIVE_S: Final = 1.0
"""How often a replica says it is alive (`keep_replicas`); one silent for three times
that is taken for dead, and the nodes it had are offline until they come to another."""
DETACH_EVERY: Final = 10
"""Every how many `keep_replicas` calls the nodes that went offline here are let go."""
DETACH_BATCH: Final = 1_000
"""Nodes let go of at once, at most (a mass departure is written over several calls
rather than in one transaction that holds up every heartbeat)."""
ORPHAN_NOTICE_EVERY_S: Final = 0.1
ORPHANS_IN_FLIGHT: Final = 500
"""Nodes of a dead replica told to move that have not registered here yet, at most:
the notices go as fast as the moved nodes are served (each costs the survivor a
registration on top of its own nodes' heartbeats), never faster."""
ORPHAN_WAIT_S: Final = 2.0
"""A told node that has not come within this long no longer counts as in flight (it is
offline, or its NAT dropped the notice; it moves at its next heartbeat)."""
PUSH_CHANNEL: Final = "pilotif_push"
"""The notification channel that wakes a replica when another left it notes (pushes for
the nodes it has, trust changes) in the database."""
NOTE_LIFETIME_S: Final = 60.0
"""A note no replica took within this long is dropped (the one it was for died)."""


@dataclass(frozen=True)
class TrustNote:
    """Another replica changed the trust between these two nodes."""

    pair: tuple[bytes, bytes]


@dataclass(frozen=True)
class PushNote:
    """Another replica left a push for a node of ours."""

    key: bytes
    payload: dict[str, Any]


@dataclass(frozen=True)
class Orphan:
    """A node of a dead replica, to tell to move here."""

    gone: str
    """The replica that died."""
    record: NodeRecord
    session: int | None
    endpoint: Endpoint


class Replicas:
    """This replica among the others; see the module docstring. `name` None: the only
    registry."""

    def __init__(self, store: Store, name: str | None, counters: Counter[str]) -> None:
        self.name = name
        self.live: set[str] = set()
        """The replicas alive at the last `keep`."""
        self.attached: set[bytes] = set()
        """Nodes whose `replica` in the database names us."""
        self._store = store
        self._counters = counters
        self._keep_calls = 0
        self._orphans: list[tuple[str, NodeRecord, int | None]] = []
        """Nodes of a dead replica not told yet: (its name, the node, its session)."""
        self._told: dict[bytes, float] = {}
        """Nodes told to move that have not registered here yet: when they were told."""

    def at_another(self, node: NodeRecord) -> bool:
        """Whether the database says the node talks to another replica than this one."""
        return self.name is not None and node.replica not in (None, self.name)

    def moved_away(self, node: NodeRecord, channel: ControlChannel) -> bool:
        """Whether the node talks to another replica, with counters this channel may not
        have seen (the database's floor is that replica's lease, above them all)."""
        return self.at_another(node) and channel.highest_counter <= node.highest_counter

    def elsewhere(self, node: NodeRecord) -> bool:
        """Whether the node talks to another replica that is alive."""
        return self.at_another(node) and node.replica in self.live

    def arrived(self, key: bytes) -> None:
        """A node registers here (told to or not)."""
        self._told.pop(key, None)

    def registered(self, key: bytes) -> None:
        """A node registered here: the database names us as its replica."""
        if self.name is not None:
            self.attached.add(key)

    def trust_changed(self, key: bytes, other: bytes, now: float) -> None:
        """Tell the other replicas' relays to forget what they knew of these two."""
        self._tell(self.live - {self.name}, {"trust": [encode_key(key), encode_key(other)]}, now)

    def forward(self, key: bytes, payload: dict[str, Any], now: float) -> None:
        """Leave a push for a node that talks to another replica that is alive."""
        if self.name is None:
            return
        record = self._store.node_by_key(key)
        if record is None or record.replica is None or not self.elsewhere(record):
            return
        self._tell((record.replica,), {"key": encode_key(key), "payload": payload}, now)
        self._counters["pushes_forwarded"] += 1

    def _tell(self, replicas: Iterable[str], note: dict[str, Any], now: float) -> None:
        """Leave other replicas a note in the database (none: no replicas)."""
        if self.name is not None:
            text = json.dumps(note, separators=(",", ":"))
            self._store.leave_notes(PUSH_CHANNEL, replicas, text, now)

    def keep(self, now: float, online: Callable[[bytes, float], bool]) -> None:
        """Say that this replica is alive, learn which others are, and (every
        DETACH_EVERY calls) let go of the nodes no longer `online` here."""
        if self.name is None:
            return
        self._store.replica_alive(self.name, now)
        live = self._store.live_replicas(now - 3 * REPLICA_ALIVE_S)
        dead = self.live - live
        self.live = live
        if dead and self.name == min(live):
            # One survivor (the first by name) tells the dead replicas' nodes to come.
            for name in sorted(dead):
                self._orphans += [(name, *node) for node in self._store.nodes_at(name)]
            log_event("replica_dead", replicas=",".join(sorted(dead)), nodes=len(self._orphans))
        self._keep_calls += 1
        if self._keep_calls % DETACH_EVERY == 0:
            self._store.drop_notes(now - NOTE_LIFETIME_S)
            offline = (key for key in self.attached if not online(key, now))
            gone = list(itertools.islice(offline, DETACH_BATCH))
            if gone:
                self._store.detach(gone, self.name)
                self.attached.difference_update(gone)

    def orphans_to_tell(self, now: float) -> list[Orphan]:
        """The nodes of a dead replica to tell now: as many as keep ORPHANS_IN_FLIGHT
        told and not yet here."""
        while self._told and next(iter(self._told.values())) < now - ORPHAN_WAIT_S:
            self._told.pop(next(iter(self._told)))
        orphans: list[Orphan] = []
        while self._orphans and len(self._told) < ORPHANS_IN_FLIGHT:
            gone, record, session = self._orphans.pop()
            try:
                endpoint = parse_endpoint(record.endpoint or "")
            except ValueError:
                self._counters["bad_endpoint"] += 1
                continue
            self._told[record.public_key] = now
            orphans.append(Orphan(gone, record, session, endpoint))
        return orphans

    def take_notes(self) -> list[TrustNote | PushNote]:
        """What other replicas left for this one in the database (what is not a note
        is counted and dropped)."""
        if self.name is None:
            return []
        notes: list[TrustNote | PushNote] = []
        for text in self._store.take_notes(self.name):
            try:
                note = json.loads(text)
                if "trust" in note:
                    key, other = (decode_key(k) for k in note["trust"])
                    notes.append(TrustNote((key, other)))
                    continue
                key = decode_key(note["key"])
                payload = note["payload"]
            except (ValueError, KeyError, TypeError, InvalidKeyError):
                self._counters["bad_notification"] += 1
                continue
            if not isinstance(payload, dict):
                self._counters["bad_notification"] += 1
                continue
            notes.append(PushNote(key, payload))
        return notes

    def save(self) -> None:
        """Our nodes are offline until they come to another replica."""
        if self.name is not None:
            self._store.detach(self.attached, self.name)
            self.attached.clear()
