"""The store's networks and join keys: a network groups the nodes that join it with its
keys (a closed one hides its members from the others); a join key admits nodes into
it with the tags it grants."""

import json

from pilotif.registry.database import Cursor
from pilotif.registry.joinkey import new_join_key, secret_matches
from pilotif.registry.records import (
    JoinKeyRecord,
    JoinRefused,
    NetworkExists,
    NetworkRecord,
    NodeRecord,
    UnknownNetwork,
)
from pilotif.registry.store_base import StoreBase


class NetworkTables(StoreBase):
    """See the module docstring."""

    def create_network(self, name: str, *, closed: bool, now: float) -> NetworkRecord:
        """A new network (NetworkExists if the name is taken)."""
        with self._transaction() as cursor:
            if cursor.execute("SELECT 1 FROM networks WHERE name = ?", (name,)).fetchone():
                raise NetworkExists(f"a network called {name!r} exists")
            cursor.execute(
                "INSERT INTO networks (name, closed, created) VALUES (?, ?, ?)",
                (name, int(closed), now),
            )
        return NetworkRecord(name, closed, now, 0)

    def networks(self) -> list[NetworkRecord]:
        """Every network with its number of members, by name."""
        rows = self._db.execute(
            "SELECT w.name, w.closed, w.created,"
            " (SELECT COUNT(*) FROM nodes n WHERE n.network = w.name)"
            " FROM networks w ORDER BY w.name"
        )
        return [
            NetworkRecord(name, bool(closed), created, count)
            for name, closed, created, count in rows
        ]

    def closed_networks(self) -> set[str]:
        """The names of the closed networks (without counting anyone's members)."""
        return {name for (name,) in self._db.execute("SELECT name FROM networks WHERE closed <> 0")}

    def create_join_key(
        self,
        *,
        network: str | None,
        tags: tuple[str, ...],
        reusable: bool,
        expires: float | None,
        now: float,
    ) -> tuple[JoinKeyRecord, str]:
        """A new join key: its record and its text (shown once: only a digest is kept)."""
        key_id, text, digest = new_join_key()
        with self._transaction() as cursor:
            if (
                network is not None
                and not cursor.execute(
                    "SELECT 1 FROM networks WHERE name = ?", (network,)
                ).fetchone()
            ):
                raise UnknownNetwork(f"no network is called {network!r}")
            cursor.execute(
                "INSERT INTO join_keys"
                " (id, digest, network, tags, reusable, expires, uses, revoked, created)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?)",
                (key_id, digest, network, json.dumps(list(tags)), int(reusable), expires, now),
            )
        record = JoinKeyRecord(key_id, network, tags, reusable, expires, 0, False, now)
        return record, text

    def join_keys(self) -> list[JoinKeyRecord]:
        """Every join key, oldest first."""
        rows = self._db.execute(
            "SELECT id, network, tags, reusable, expires, uses, revoked, created"
            " FROM join_keys ORDER BY created, id"
        )
        return [
            JoinKeyRecord(
                key_id,
                network,
                tuple(json.loads(tags)),
                bool(reusable),
                expires,
                uses,
                bool(revoked),
                created,
            )
            for key_id, network, tags, reusable, expires, uses, revoked, created in rows
        ]

    def revoke_join_key(self, key_id: str) -> None:
        """Revoke a join key (nodes it admitted stay); UnknownJoinKey if none has that id."""
        with self._transaction() as cursor:
            if not cursor.execute(
                "UPDATE join_keys SET revoked = 1 WHERE id = ?", (key_id,)
            ).rowcount:
                raise JoinRefused("join_key_unknown", f"no join key has the id {key_id!r}")

    @staticmethod
    def _redeem(
        cursor: Cursor,
        public_key: bytes,
        join_key: tuple[str, str],
        existing: NodeRecord | None,
        now: float,
    ) -> None:
        key_id, secret = join_key
        row = cursor.execute(
            "SELECT digest, network, tags, reusable, expires, uses, revoked"
            " FROM join_keys WHERE id = ?",
            (key_id,),
        ).fetchone()
        if row is None or not secret_matches(secret, bytes(row[0])):
            raise JoinRefused("join_key_unknown", "the registry does not know this join key")
        network, tags_text, reusable, expires, uses, revoked = row[1:]
        if revoked:
            raise JoinRefused("join_key_revoked", "this join key was revoked")
        if expires is not None and now >= expires:
            raise JoinRefused("join_key_expired", "this join key has expired")
        again = existing is not None and existing.join_key == key_id
        if uses and not reusable and not again:
            raise JoinRefused("join_key_used", "this one-off join key was used already")
        granted = list(existing.granted_tags) if existing is not None else []
        granted += [tag for tag in json.loads(tags_text) if tag not in granted]
        cursor.execute(
            "UPDATE nodes SET network = ?, granted_tags = ?, join_key = ? WHERE public_key = ?",
            (network, json.dumps(granted), key_id, public_key),
        )
        if not again:
            cursor.execute("UPDATE join_keys SET uses = uses + 1 WHERE id = ?", (key_id,))
