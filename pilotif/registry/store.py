"""The registry's durable state: nodes (key, name, address, tags, network, where last
seen), trust requests and trusts, networks and join keys, in one SQLite file.

Every change runs in one transaction. The schema and queries are plain SQL that
PostgreSQL also accepts (keys as BLOB/BYTEA, times as float seconds, JSON lists as
text), so a PostgreSQL backend could later serve several registry replicas.
"""

import json
from collections.abc import Iterable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from pilotif.control.identity import ipv6_for_key
from pilotif.registry.database import Cursor
from pilotif.registry.records import (
    NODE_COLUMNS,
    JoinKeyRecord,
    JoinRefused,
    NameTaken,
    NetworkExists,
    NetworkFull,
    NetworkRecord,
    NodeRecord,
    NoRequest,
    StoreError,
    TrustOutcome,
    TrustState,
    UnknownNetwork,
    UnknownNode,
    row_limit,
)
from pilotif.registry.store_base import NODE_CHANNEL
from pilotif.registry.store_networks import NetworkTables
from pilotif.registry.store_replicas import ReplicaTables
from pilotif.registry.store_trust import (
    MAX_PENDING_PER_REQUESTER,
    MAX_PENDING_PER_TARGET,
    TrustTables,
)

__all__ = [
    "DB_FILE_NAME",
    "MAX_PENDING_PER_REQUESTER",
    "MAX_PENDING_PER_TARGET",
    "NODE_CHANNEL",
    "JoinKeyRecord",
    "JoinRefused",
    "NameTaken",
    "NetworkExists",
    "NetworkFull",
    "NetworkRecord",
    "NoRequest",
    "NodeRecord",
    "Store",
    "StoreError",
    "TrustOutcome",
    "TrustState",
    "UnknownNetwork",
    "UnknownNode",
]

DB_FILE_NAME: Final = "registry.db"
_OCTET_MASK: Final = 0xFF
_RESERVED_LAST_OCTETS: Final = (0x00, 0xFF)
_NOT_IN_A_NETWORK: Final = (None, "[]", None, None)
"""The network, granted tags, join key and replica of a node that joined without a key."""


class Store(TrustTables, NetworkTables, ReplicaTables):
    """The registry database: its nodes (this class), trust (TrustTables), networks and
    join keys (NetworkTables) and replicas (ReplicaTables); one instance per process,
    used from one thread."""

    def register(
        self,
        public_key: bytes,
        hostname: str,
        tags: tuple[str, ...],
        now: float,
        *,
        join_key: tuple[str, str] | None = None,
        require_join_key: bool = False,
        expired_before: float | None = None,
    ) -> tuple[NodeRecord, bool]:
        """Insert a node or update its name and tags; the record and whether it is new.

        A new node gets the address after the highest taken (the lowest free one once
        the network's top is reached), for good. The
        hostname (already normalized) must not belong to another key (NameTaken), unless
        that node was last seen before `expired_before`: then it is removed first. A
        join key (id, secret) is redeemed (JoinRefused if it is not good): the node joins
        its network and holds its tags. A new node without one is refused when
        `require_join_key`; a node that the same key admitted before redeems it again
        without using it up.
        """
        with self._transaction() as cursor:
            owner = cursor.execute(
                "SELECT public_key, COALESCE(last_seen, created) FROM nodes WHERE hostname = ?",
                (hostname,),
            ).fetchone()
            if owner is not None and bytes(owner[0]) != public_key:
                if expired_before is None or owner[1] >= expired_before:
                    raise NameTaken(f"the name {hostname!r} belongs to another node")
                cursor.execute("DELETE FROM nodes WHERE public_key = ?", (bytes(owner[0]),))
                self._touched(bytes(owner[0]))
            self._touched(public_key)
            existing = self._node(cursor, "public_key = ?", public_key)
            if join_key is None and existing is None and require_join_key:
                raise JoinRefused(
                    "join_key_required", "this registry admits only nodes with a join key"
                )
            tags_text = json.dumps(list(tags))
            if existing is None:
                address = self._free_address(cursor)
                ipv6 = str(ipv6_for_key(public_key))
                cursor.execute(
                    f"INSERT INTO nodes ({NODE_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        *(public_key, hostname, address, ipv6, tags_text, -1),
                        *(None, "[]", None, now, *_NOT_IN_A_NETWORK),
                    ),
                )
            else:
                cursor.execute(
                    "UPDATE nodes SET hostname = ?, tags = ? WHERE public_key = ?",
                    (hostname, tags_text, public_key),
                )
            if join_key is not None:
                self._redeem(cursor, public_key, join_key, existing, now)
            record = self._node(cursor, "public_key = ?", public_key)
        assert record is not None
        if existing is None:
            # Its first heartbeat finds it here (100,000 new nodes would otherwise make
            # 100,000 reads in the next 20 s).
            self._remember(public_key, (record, False))
        return record, existing is None

    def _free_address(self, cursor: Cursor) -> int:
        """The address after the highest one taken (one index lookup, whatever the number
        of nodes); once the top of the network is reached, the lowest gap that expired
        nodes left (a walk over the taken addresses, which happens only then)."""
        first = int(self.network.network_address) + 1
        last = int(self.network.broadcast_address) - 1
        # ORDER BY ... LIMIT 1 rather than MAX(): PostgreSQL's generic plan for MAX()
        # over a range of parameters scans the range, this one reads one index entry.
        row = cursor.execute(
            "SELECT ipv4 FROM nodes WHERE ipv4 >= ? AND ipv4 <= ? ORDER BY ipv4 DESC LIMIT 1",
            (first, last),
        ).fetchone()
        candidate = _skip_reserved(first if row is None else int(row[0]) + 1)
        if candidate <= last:
            return candidate
        return self._lowest_gap(cursor, first, last)

    def _lowest_gap(self, cursor: Cursor, first: int, last: int) -> int:
        used = cursor.execute(
            "SELECT ipv4 FROM nodes WHERE ipv4 >= ? AND ipv4 <= ? ORDER BY ipv4", (first, last)
        )
        candidate = first
        for (taken,) in used:
            candidate = _skip_reserved(candidate)
            if candidate < taken:
                break
            candidate = max(candidate, taken + 1)
        candidate = _skip_reserved(candidate)
        if candidate > last:
            raise NetworkFull(f"every address of {self.network} is taken")
        return candidate

    def mark_seen(
        self,
        public_key: bytes,
        *,
        endpoint: str,
        lan_endpoints: tuple[str, ...],
        session: int | None,
        now: float,
        replica: str | None = None,
    ) -> None:
        """Record a heartbeat: where the node is, its session (so that a restarted
        registry can push to it at once) and the replica it talks to.

        Heartbeats are written in batches (with the next transaction, or `flush`): one
        commit for many nodes instead of one each. Every read sees them at once."""
        lan_text = json.dumps(list(lan_endpoints))
        self._seen_pending[public_key] = (endpoint, lan_text, now, session, replica)
        self._update_cached(
            public_key,
            lambda node: replace(
                node, endpoint=endpoint, lan_endpoints=lan_endpoints, last_seen=now, replica=replica
            ),
        )

    def touch(self, seen: Iterable[tuple[bytes, float]]) -> None:
        """Raise the last-seen times of these nodes (key, time) where the database has
        an earlier one, in one transaction."""
        with self._transaction() as cursor:
            cursor.executemany(
                "UPDATE nodes SET last_seen = ? WHERE public_key = ?"
                " AND (last_seen IS NULL OR last_seen < ?)",
                [(seen_s, key, seen_s) for key, seen_s in seen],
            )

    def record_counter(self, public_key: bytes, counter: int) -> None:
        """Raise the node's stored counter floor to `counter` (written as heartbeats
        are)."""
        if counter > self._counter_pending.get(public_key, -1):
            self._counter_pending[public_key] = counter
        self._update_cached(
            public_key,
            lambda node: replace(node, highest_counter=max(node.highest_counter, counter)),
        )

    def set_counter_floors(self, floors: Iterable[tuple[bytes, int]]) -> None:
        """Set these nodes' counter floors (key, counter) exactly, in one transaction:
        only for counters known to be the highest accepted (a lease is lowered)."""
        with self._transaction() as cursor:
            cursor.executemany(
                "UPDATE nodes SET highest_counter = ? WHERE public_key = ?",
                [(counter, key) for key, counter in floors],
            )

    def node_by_key(self, public_key: bytes) -> NodeRecord | None:
        """The node with this key."""
        return self._node(self._db, "public_key = ?", public_key)

    def node_and_requests(self, public_key: bytes) -> tuple[NodeRecord | None, bool]:
        """The node with this key, and whether trust requests to it wait: what every
        control message needs, in one query (a round trip, on PostgreSQL)."""
        cache = self._cache
        if cache is not None:
            if self._db.changed_elsewhere():
                cache.clear()
            elif (found := cache.get(public_key)) is not None:
                return found
        row = self._db.execute(
            f"SELECT {NODE_COLUMNS},"
            " EXISTS (SELECT 1 FROM trust_requests WHERE to_key = ?) FROM nodes"
            " WHERE public_key = ?",
            (public_key, public_key),
        ).fetchone()
        if row is None:
            return None, False
        found = (self._record(row[:-1]), bool(row[-1]))
        self._remember(public_key, found)
        return found

    def node_by_hostname(self, hostname: str) -> NodeRecord | None:
        """The node with this (normalized) hostname."""
        return self._node(self._db, "hostname = ?", hostname)

    def node_by_ipv4(self, address: IPv4Address) -> NodeRecord | None:
        """The node with this IPv4 address."""
        return self._node(self._db, "ipv4 = ?", int(address))

    def node_by_ipv6(self, address: IPv6Address) -> NodeRecord | None:
        """The node with this IPv6 address."""
        return self._node(self._db, "ipv6 = ?", str(address))

    def nodes_with_tag(self, tag: str, limit: int, offset: int = 0) -> list[NodeRecord]:
        """Up to `limit` nodes carrying the tag (their own or granted), by hostname,
        skipping the first `offset`.

        Tags are DNS labels (no quotes, '%' or '_'), so the quoted tag matches exactly
        the one element of the JSON list that equals it.
        """
        rows = self._db.execute(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE tags LIKE ? OR granted_tags LIKE ?"
            " ORDER BY hostname LIMIT ? OFFSET ?",
            (f'%"{tag}"%', f'%"{tag}"%', row_limit(limit), offset),
        )
        return [self._record(row) for row in rows]

    def all_endpoints(self) -> list[tuple[bytes, str, float, int | None, str | None]]:
        """Every node's key, public endpoint, last-seen time, session and replica, for the
        relay's index, pushes and the recall after a restart."""
        self.flush()
        rows = self._db.execute(
            "SELECT public_key, endpoint, last_seen, session, replica FROM nodes"
            " WHERE endpoint IS NOT NULL AND last_seen IS NOT NULL"
        )
        return [
            (bytes(key), str(endpoint), float(seen), session, replica)
            for key, endpoint, seen, session, replica in rows
        ]

    def nodes(self, limit: int = -1, offset: int = 0) -> list[NodeRecord]:
        """Every node, by hostname (`limit` of them from `offset`)."""
        rows = self._db.execute(
            f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY hostname LIMIT ? OFFSET ?",
            (row_limit(limit), offset),
        )
        return [self._record(row) for row in rows]

    def remove_node(self, hostname: str) -> NodeRecord:
        """Remove a node (its trusts and requests go with it); UnknownNode if none."""
        with self._transaction() as cursor:
            record = self._node(cursor, "hostname = ?", hostname)
            if record is None:
                raise UnknownNode(f"no node is called {hostname!r}")
            cursor.execute("DELETE FROM nodes WHERE public_key = ?", (record.public_key,))
            self._touched(record.public_key)
        return record

    def rename_node(self, hostname: str, new_name: str) -> NodeRecord:
        """Give a node another (normalized, free) name."""
        with self._transaction() as cursor:
            record = self._node(cursor, "hostname = ?", hostname)
            if record is None:
                raise UnknownNode(f"no node is called {hostname!r}")
            if self._node(cursor, "hostname = ?", new_name) is not None:
                raise NameTaken(f"the name {new_name!r} belongs to another node")
            cursor.execute(
                "UPDATE nodes SET hostname = ? WHERE public_key = ?", (new_name, record.public_key)
            )
            self._touched(record.public_key)
            renamed = self._node(cursor, "public_key = ?", record.public_key)
        assert renamed is not None
        return renamed

    def set_granted_tag(self, hostname: str, tag: str, granted: bool) -> NodeRecord:
        """Grant a node a tag, or take it back."""
        with self._transaction() as cursor:
            record = self._node(cursor, "hostname = ?", hostname)
            if record is None:
                raise UnknownNode(f"no node is called {hostname!r}")
            tags = [t for t in record.granted_tags if t != tag] + ([tag] if granted else [])
            cursor.execute(
                "UPDATE nodes SET granted_tags = ? WHERE public_key = ?",
                (json.dumps(tags), record.public_key),
            )
            self._touched(record.public_key)
            changed = self._node(cursor, "public_key = ?", record.public_key)
        assert changed is not None
        return changed

    def expire_nodes(self, seen_before: float) -> list[NodeRecord]:
        """Remove every node last seen (or, never seen, created) before `seen_before`:
        its name and address can be taken again. The removed nodes."""
        with self._transaction() as cursor:
            # Not COALESCE(last_seen, created): that reads every row (19 ms at 100,000
            # nodes, once a minute, the loop held); this uses the last_seen index.
            where = "last_seen < ? OR (last_seen IS NULL AND created < ?)"
            rows = cursor.execute(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE {where}", (seen_before, seen_before)
            )
            expired = [self._record(row) for row in rows]
            cursor.execute(f"DELETE FROM nodes WHERE {where}", (seen_before, seen_before))
            self._touched(*(node.public_key for node in expired))
        return expired


def _skip_reserved(address: int) -> int:
    """The first address at or after `address` whose last octet is neither 0 nor 255."""
    while address & _OCTET_MASK in _RESERVED_LAST_OCTETS:
        address += 1
    return address
