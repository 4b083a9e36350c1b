"""What every part of the registry's store stands on: the database connection, one
transaction at a time (heartbeats and counter floors batched into the next one), and
on a shared database the nodes it remembers, let go of when anyone changes them
(announced on NODE_CHANNEL)."""

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Final

from pilotif.registry.database import Cursor, Executor, open_database
from pilotif.registry.records import NODE_COLUMNS, NodeRecord, node_from_row
from pilotif.registry.schema import migrate

NODE_CHANNEL: Final = "pilotif_node"
"""The notification channel on which changes to nodes are announced (`ORIGIN:KEY,KEY...`
in hex): every other store lets go of what it remembered of them."""
_KEYS_PER_NOTIFICATION: Final = 100
"""Keys in one notification (PostgreSQL takes 8,000 bytes; one round trip for many)."""
MAX_CACHED_NODES: Final = 250_000
"""Nodes a store remembers (all are let go when it is full)."""


class StoreBase:
    """The connection, transactions and remembered nodes that the store's tables share;
    one instance per process, used from one thread."""

    def __init__(self, location: str | Path, network: IPv4Network) -> None:
        """Open (creating and migrating it if need be) the SQLite file at `location`, or
        the PostgreSQL database its `postgresql://` URL names; DatabaseError if that
        fails."""
        self.network = network
        self._seen_pending: dict[bytes, tuple[str, str, float, int | None, str | None]] = {}
        """Heartbeats not written yet: endpoint, LAN endpoints (JSON), time, session,
        replica."""
        self._counter_pending: dict[bytes, int] = {}
        """Counter floors not written yet."""
        self._db = open_database(location)
        self._cache: dict[bytes, tuple[NodeRecord, bool]] | None = {}
        """What `node_and_requests` read (a heartbeat then needs no query). What this
        store changes is let go of when it commits; on a shared database a change anyone
        makes is announced on NODE_CHANNEL and let go; on a SQLite file a commit by
        another process (`registry admin`) lets go of all (`changed_elsewhere`)."""
        self._changed: set[bytes] = set()
        """Nodes the current transaction changes: let go of here and announced when it
        commits."""
        self._written_as_remembered: set[bytes] = set()
        """Nodes the current transaction writes only what we remember of them already
        (their heartbeats, a detach): announced, not let go of here."""
        self._origin = os.urandom(4).hex()
        """Our name in what we announce (our own announcements change nothing here)."""
        try:
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Write what is pending and close the database."""
        self.flush()
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        """One transaction, which writes the pending heartbeats first (they stay pending
        if it rolls back)."""
        self._changed.clear()
        self._written_as_remembered.clear()
        with self._db.transaction() as cursor:
            pending = self.unwritten > 0
            if pending:
                self._write_pending(cursor)
            yield cursor
            self._announce(cursor)
        if pending:
            self._seen_pending.clear()
            self._counter_pending.clear()

    @property
    def unwritten(self) -> int:
        """How many heartbeats and counter floors are not written yet."""
        return len(self._seen_pending) + len(self._counter_pending)

    def flush(self) -> None:
        """Write the heartbeats and counter floors recorded since the last write."""
        if self.unwritten:
            with self._transaction():
                pass

    def _touched(self, *keys: bytes) -> None:
        """The current transaction changes these nodes."""
        self._changed.update(keys)

    def _announce(self, cursor: Cursor) -> None:
        """Let go of the changed nodes here and, on a shared database, tell the others
        (delivered when the transaction commits)."""
        if self._cache is None:
            return
        for key in self._changed:
            self._cache.pop(key, None)
        if not self._db.shared:
            return
        changed = sorted(self._changed | self._written_as_remembered)
        for start in range(0, len(changed), _KEYS_PER_NOTIFICATION):
            keys = ",".join(key.hex() for key in changed[start : start + _KEYS_PER_NOTIFICATION])
            cursor.execute("SELECT pg_notify(?, ?)", (NODE_CHANNEL, f"{self._origin}:{keys}"))

    def _remember(self, key: bytes, found: tuple[NodeRecord, bool]) -> None:
        """Keep a node (and whether requests to it wait) in memory; all are let go when
        MAX_CACHED_NODES are kept."""
        if self._cache is None:
            return
        if len(self._cache) >= MAX_CACHED_NODES:
            self._cache.clear()
        self._cache[key] = found

    def _update_cached(self, key: bytes, change: Callable[[NodeRecord], NodeRecord]) -> None:
        """Apply a change this store writes to what it remembers of the node, if any."""
        cached = self._cache.get(key) if self._cache is not None else None
        if cached is not None:
            self._remember(key, (change(cached[0]), cached[1]))

    def _write_pending(self, cursor: Cursor) -> None:
        # Where a node is (and which replica has it) is news for the other replicas.
        self._written_as_remembered.update(self._seen_pending)
        cursor.executemany(
            "UPDATE nodes SET endpoint = ?, lan_endpoints = ?, last_seen = ?, session = ?,"
            " replica = ? WHERE public_key = ?",
            [(*seen, key) for key, seen in self._seen_pending.items()],
        )
        cursor.executemany(
            "UPDATE nodes SET highest_counter = ? WHERE public_key = ? AND highest_counter < ?",
            [(counter, key, counter) for key, counter in self._counter_pending.items()],
        )

    def _node(self, cursor: Executor, where: str, value: object) -> NodeRecord | None:
        row = cursor.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE {where}", (value,))
        found = row.fetchone()
        return None if found is None else self._record(found)

    def _record(self, row: tuple[Any, ...]) -> NodeRecord:
        """The node of a row, with its heartbeat not written yet (if any) applied."""
        record = node_from_row(row)
        seen = self._seen_pending.get(record.public_key)
        counter = self._counter_pending.get(record.public_key, -1)
        if seen is not None:
            endpoint, lan_text, last_seen, _, replica = seen
            record = replace(
                record,
                endpoint=endpoint,
                lan_endpoints=tuple(json.loads(lan_text)),
                last_seen=last_seen,
                replica=replica,
            )
        if counter > record.highest_counter:
            record = replace(record, highest_counter=counter)
        return record
