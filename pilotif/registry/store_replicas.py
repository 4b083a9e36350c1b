"""The store's tables for registry replicas on one shared database: which replicas are
alive, the nodes each has, the notes they leave each other, the notifications that
wake them, and the registry's identity they share."""

import contextlib
from collections.abc import Iterable
from dataclasses import replace

from pilotif.registry.database import DatabaseError
from pilotif.registry.records import NODE_COLUMNS, NodeRecord
from pilotif.registry.store_base import NODE_CHANNEL, StoreBase


class ReplicaTables(StoreBase):
    """See the module docstring."""

    def replica_alive(self, name: str, now: float) -> None:
        """Say that replica `name` is alive now."""
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO replicas (name, alive) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET alive = excluded.alive",
                (name, now),
            )

    def live_replicas(self, since: float) -> set[str]:
        """The replicas that said they were alive at `since` or later."""
        rows = self._db.execute("SELECT name FROM replicas WHERE alive >= ?", (since,))
        return {str(name) for (name,) in rows}

    def nodes_at(self, replica: str) -> list[tuple[NodeRecord, int | None]]:
        """Every node whose row names `replica` (one that died: its nodes are told to
        move), with its session; read in one query and remembered, as
        `node_and_requests` would, for when they come."""
        self.flush()
        rows = self._db.execute(
            f"SELECT {NODE_COLUMNS}, session,"
            " EXISTS (SELECT 1 FROM trust_requests WHERE to_key = public_key)"
            " FROM nodes WHERE replica = ?",
            (replica,),
        )
        found = []
        for row in rows:
            record = self._record(row[:-2])
            self._remember(record.public_key, (record, bool(row[-1])))
            found.append((record, row[-2]))
        return found

    def detach(self, keys: Iterable[bytes], replica: str) -> None:
        """These nodes went offline at `replica` (unless another replica has them now)."""
        self.flush()
        keys = list(keys)
        with self._transaction() as cursor:
            self._written_as_remembered.update(keys)  # what we remember is updated below
            cursor.executemany(
                "UPDATE nodes SET replica = NULL WHERE public_key = ? AND replica = ?",
                [(key, replica) for key in keys],
            )
        for key in keys:
            self._update_cached(
                key, lambda node: replace(node, replica=None) if node.replica == replica else node
            )

    def leave_notes(self, channel: str, replicas: Iterable[str], note: str, now: float) -> None:
        """Leave `note` for each of `replicas` in the database and wake them on `channel`
        (a lone SQLite registry has nobody to tell). The notification carries nothing:
        any role that may connect may send one, so what a replica acts on is only what
        the registry's role wrote (`take_notes`)."""
        rows = [(replica, note, now) for replica in replicas]
        if not rows or not self._db.shared:
            return
        with self._transaction() as cursor:
            cursor.executemany(
                "INSERT INTO replica_notes (replica, note, created) VALUES (?, ?, ?)", rows
            )
            # Delivered when the transaction commits: the rows are there by then.
            cursor.execute("SELECT pg_notify(?, '')", (channel,))

    def take_notes(self, replica: str) -> list[str]:
        """The notes left for `replica`, oldest first, taken out of the database."""
        rows = self._db.execute(
            "DELETE FROM replica_notes WHERE replica = ? RETURNING id, note", (replica,)
        )
        return [str(note) for _, note in sorted(rows)]

    def drop_notes(self, created_before: float) -> None:
        """Forget the notes nobody took (their replica died) left before this time."""
        if self._db.shared:
            self._db.execute("DELETE FROM replica_notes WHERE created < ?", (created_before,))

    def listen(self, channel: str) -> int | None:
        """Start receiving `channel`'s notifications (and the changes to nodes others
        make); the file descriptor to wait on (None: this database has none)."""
        self._db.listen(NODE_CHANNEL)
        fd = self._db.listen(channel)
        if self._db.shared:
            # Heard from now on: what others change is let go of again (nothing that
            # was remembered while nobody listened is kept).
            self._cache = {}
        return fd

    def notifications(self) -> list[str]:
        """The payloads received on the listened channel since the last call (what
        others changed is let go of here)."""
        payloads = []
        try:
            received = self._db.notifications()
        except DatabaseError:
            # Changes others make would go unheard: read every node from the database.
            self._cache = None
            raise
        for channel, payload in received:
            if channel != NODE_CHANNEL:
                payloads.append(payload)
            elif self._cache is not None:
                origin, _, keys = payload.partition(":")
                if origin != self._origin:
                    for key in keys.split(","):
                        with contextlib.suppress(ValueError):
                            self._cache.pop(bytes.fromhex(key), None)
        return payloads

    def identity(self, proposed: bytes, now: float) -> bytes:
        """The registry's private key kept in the database (replicas share it): the one
        there, or `proposed`, stored now if there is none."""
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO registry_identity (id, private_key, created) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (proposed, now),
            )
            row = cursor.execute("SELECT private_key FROM registry_identity").fetchone()
        return bytes(row[0])
