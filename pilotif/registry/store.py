"""The registry's durable state: nodes (key, name, address, tags, network, where last
seen), trust requests and trusts, networks and join keys, in one SQLite file.

Every change runs in one transaction. The schema and queries are plain SQL that
PostgreSQL also accepts (keys as BLOB/BYTEA, times as float seconds, JSON lists as
text), so a PostgreSQL backend could later serve several registry replicas.
"""

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any, Final, Literal

from pilotif.control.identity import ipv6_for_key
from pilotif.registry.database import Cursor, DatabaseError, Executor, open_database
from pilotif.registry.joinkey import new_join_key, secret_matches
from pilotif.registry.schema import migrate
from pilotif.util.errors import CodedError

TrustState = Literal["none", "pending", "trusted"]

DB_FILE_NAME: Final = "registry.db"
_OCTET_MASK: Final = 0xFF
_RESERVED_LAST_OCTETS: Final = (0x00, 0xFF)
MAX_PENDING_PER_TARGET: Final = 100
"""Unanswered trust requests one node may hold; a newer one expires the oldest."""
NODE_CHANNEL: Final = "pilotif_node"
"""The notification channel on which changes to nodes are announced (`ORIGIN:KEY,KEY...`
in hex): every other store lets go of what it remembered of them."""
_KEYS_PER_NOTIFICATION: Final = 100
"""Keys in one notification (PostgreSQL takes 8,000 bytes; one round trip for many)."""
MAX_CACHED_NODES: Final = 250_000
"""Nodes a store on a shared database remembers (all are let go when it is full)."""
MAX_PENDING_PER_REQUESTER: Final = 50
"""Unanswered trust requests one node may have out; a newer one expires its oldest."""

_NOT_IN_A_NETWORK: Final = (None, "[]", None, None)
"""The network, granted tags, join key and replica of a node that joined without a key."""
_NO_LIMIT: Final = 2**62
"""LIMIT for "every row" (SQLite's -1 is not SQL that PostgreSQL takes)."""
_NODE_FIELDS: Final = (
    "public_key",
    "hostname",
    "ipv4",
    "ipv6",
    "tags",
    "highest_counter",
    "endpoint",
    "lan_endpoints",
    "last_seen",
    "created",
    "network",
    "granted_tags",
    "join_key",
    "replica",
)
_NODE_COLUMNS: Final = ", ".join(_NODE_FIELDS)
_N_NODE_COLUMNS: Final = ", ".join(f"n.{field}" for field in _NODE_FIELDS)
"""The node columns of `nodes n` in a join."""


class StoreError(Exception):
    """A request the registry refuses; `code` is what the reply carries."""

    code = "error"


class NameTaken(StoreError):
    """The hostname belongs to another key."""

    code = "name_taken"


class NetworkFull(StoreError):
    """No address of the network is free."""

    code = "network_full"


class UnknownNode(StoreError):
    """No node has this key."""

    code = "unknown_peer"


class NoRequest(StoreError):
    """There is no trust request to answer."""

    code = "no_request"


class NetworkExists(StoreError):
    """A network of that name exists."""

    code = "network_exists"


class UnknownNetwork(StoreError):
    """No network has that name."""

    code = "unknown_network"


class JoinRefused(StoreError, CodedError):
    """A node that may not join: no key where one is required, or a key that is not
    (or no longer) good; `code` says which."""


@dataclass(frozen=True)
class NodeRecord:
    """One registered node as stored."""

    public_key: bytes
    hostname: str
    ipv4: IPv4Address
    ipv6: IPv6Address
    """Derived from the key (`ipv6_for_key`), stored to look nodes up by it."""
    tags: tuple[str, ...]
    highest_counter: int
    """A floor at or above every control counter accepted from it: after a restart,
    counters up to it (replays) are refused."""
    endpoint: str | None
    """Its public endpoint, `ip:port` as the registry saw it, once it registered."""
    lan_endpoints: tuple[str, ...]
    last_seen: float | None
    """Wall-clock seconds of its last registration (heartbeat) as written: the registry
    writes it when the node's endpoints change, else every few minutes."""
    created: float
    network: str | None
    """The network it joined with a join key (None: none)."""
    granted_tags: tuple[str, ...]
    """Tags a join key or the operator granted (`tags` are its own labels)."""
    join_key: str | None
    """The id of the join key that admitted it last."""
    replica: str | None = None
    """The registry replica it talks to while it is online (None: offline, or a
    registry without replicas)."""


@dataclass(frozen=True)
class NetworkRecord:
    """A network: a group of nodes that join it with its keys."""

    name: str
    closed: bool
    """A closed network's members are found only by other members."""
    created: float
    members: int


@dataclass(frozen=True)
class JoinKeyRecord:
    """A join key as stored (its secret only as a digest)."""

    id: str
    network: str | None
    tags: tuple[str, ...]
    reusable: bool
    expires: float | None
    uses: int
    revoked: bool
    created: float


@dataclass(frozen=True)
class TrustOutcome:
    """The trust between two nodes after a request, an answer or an untrust."""

    state: TrustState
    changed: bool
    """Whether the trust itself was just established or revoked."""


class Store:
    """The registry database; one instance per process, used from one thread."""

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
        self._cache: dict[bytes, tuple[NodeRecord, bool]] | None = {} if self._db.shared else None
        """On a shared database, what `node_and_requests` read (a heartbeat then needs no
        round trip); a change anyone makes is announced on NODE_CHANNEL and let go."""
        self._changed: set[bytes] = set()
        """Nodes the current transaction changes (announced when it commits)."""
        self._heartbeats_written: set[bytes] = set()
        """Nodes whose heartbeat the current transaction writes: announced, but what we
        remember of them is already up to date."""
        self._origin = os.urandom(4).hex()
        """Our name in what we announce (our own announcements change nothing here)."""
        try:
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    # -- replicas ----------------------------------------------------------------------

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
            f"SELECT {_NODE_COLUMNS}, session,"
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
            self._touched(*keys)
            self._heartbeats_written.update(keys)  # what we remember is updated below
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

    def close(self) -> None:
        """Write what is pending and close the database."""
        self.flush()
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        """One transaction, which writes the pending heartbeats first (they stay pending
        if it rolls back)."""
        self._changed.clear()
        self._heartbeats_written.clear()
        with self._db.transaction() as cursor:
            pending = self.unwritten > 0
            if pending:
                self._write_pending(cursor)
            yield cursor
            self._announce(cursor)
        if pending:
            self._seen_pending.clear()
            self._counter_pending.clear()

    # -- nodes -----------------------------------------------------------------------

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
                    f"INSERT INTO nodes ({_NODE_COLUMNS})"
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
        changed = sorted(self._changed)
        for key in changed:
            if key not in self._heartbeats_written:
                self._cache.pop(key, None)
        for start in range(0, len(changed), _KEYS_PER_NOTIFICATION):
            keys = ",".join(key.hex() for key in changed[start : start + _KEYS_PER_NOTIFICATION])
            cursor.execute("SELECT pg_notify(?, ?)", (NODE_CHANNEL, f"{self._origin}:{keys}"))

    def _remember(self, key: bytes, found: tuple[NodeRecord, bool]) -> None:
        """Keep a node (and whether requests to it wait) in memory, on a shared
        database; all are let go when MAX_CACHED_NODES are kept."""
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
        self._touched(*self._seen_pending)
        self._heartbeats_written.update(self._seen_pending)
        cursor.executemany(
            "UPDATE nodes SET endpoint = ?, lan_endpoints = ?, last_seen = ?, session = ?,"
            " replica = ? WHERE public_key = ?",
            [(*seen, key) for key, seen in self._seen_pending.items()],
        )
        cursor.executemany(
            "UPDATE nodes SET highest_counter = ? WHERE public_key = ? AND highest_counter < ?",
            [(counter, key, counter) for key, counter in self._counter_pending.items()],
        )

    def node_by_key(self, public_key: bytes) -> NodeRecord | None:
        """The node with this key."""
        return self._node(self._db, "public_key = ?", public_key)

    def node_and_requests(self, public_key: bytes) -> tuple[NodeRecord | None, bool]:
        """The node with this key, and whether trust requests to it wait: what every
        control message needs, in one query (a round trip, on PostgreSQL)."""
        if self._cache is not None and public_key in self._cache:
            return self._cache[public_key]
        row = self._db.execute(
            f"SELECT {_NODE_COLUMNS},"
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
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE tags LIKE ? OR granted_tags LIKE ?"
            " ORDER BY hostname LIMIT ? OFFSET ?",
            (f'%"{tag}"%', f'%"{tag}"%', _rows(limit), offset),
        )
        return [self._record(row) for row in rows]

    def all_endpoints(self) -> list[tuple[bytes, str, float, int | None]]:
        """Every node's key, public endpoint, last-seen time and session, for the relay's
        index and pushes after a restart."""
        self.flush()
        rows = self._db.execute(
            "SELECT public_key, endpoint, last_seen, session FROM nodes"
            " WHERE endpoint IS NOT NULL AND last_seen IS NOT NULL"
        )
        return [
            (bytes(key), str(endpoint), float(seen), session)
            for key, endpoint, seen, session in rows
        ]

    def _node(self, cursor: Executor, where: str, value: object) -> NodeRecord | None:
        row = cursor.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE {where}", (value,))
        found = row.fetchone()
        return None if found is None else self._record(found)

    def _record(self, row: tuple[Any, ...]) -> NodeRecord:
        """The node of a row, with its heartbeat not written yet (if any) applied."""
        record = _record(row)
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

    def nodes(self, limit: int = -1, offset: int = 0) -> list[NodeRecord]:
        """Every node, by hostname (`limit` of them from `offset`)."""
        rows = self._db.execute(
            f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY hostname LIMIT ? OFFSET ?",
            (_rows(limit), offset),
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
            where = "COALESCE(last_seen, created) < ?"
            rows = cursor.execute(
                f"SELECT {_NODE_COLUMNS} FROM nodes WHERE {where}", (seen_before,)
            )
            expired = [self._record(row) for row in rows]
            cursor.execute(f"DELETE FROM nodes WHERE {where}", (seen_before,))
            self._touched(*(node.public_key for node in expired))
        return expired

    # -- networks and join keys -----------------------------------------------------------

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

    # -- trust -----------------------------------------------------------------------

    def request_trust(
        self, from_key: bytes, to_key: bytes, message: str, now: float
    ) -> TrustOutcome:
        """`from_key` asks `to_key` for trust; trusted at once if `to_key` asked too."""
        if from_key == to_key:
            raise StoreError("a node cannot ask itself for trust")
        with self._transaction() as cursor:
            self._require(cursor, to_key)
            self._touched(from_key, to_key)  # whether requests wait for either
            if self._trusted(cursor, from_key, to_key):
                return TrustOutcome("trusted", changed=False)
            crossing = cursor.execute(
                "SELECT 1 FROM trust_requests WHERE from_key = ? AND to_key = ?",
                (to_key, from_key),
            ).fetchone()
            if crossing is not None:
                self._establish(cursor, from_key, to_key, now)
                return TrustOutcome("trusted", changed=True)
            cursor.execute(
                "DELETE FROM trust_requests WHERE from_key = ? AND to_key = ?", (from_key, to_key)
            )
            cursor.execute(
                "INSERT INTO trust_requests (from_key, to_key, message, created)"
                " VALUES (?, ?, ?, ?)",
                (from_key, to_key, message, now),
            )
            self._keep_newest(cursor, "to_key", to_key, MAX_PENDING_PER_TARGET)
            self._keep_newest(cursor, "from_key", from_key, MAX_PENDING_PER_REQUESTER)
        return TrustOutcome("pending", changed=False)

    def respond(
        self, responder: bytes, requester: bytes, approve: bool, now: float
    ) -> TrustOutcome:
        """`responder` approves or rejects the request of `requester`.

        Approving again once trusted is a no-op; approving with no request is NoRequest.
        """
        with self._transaction() as cursor:
            self._require(cursor, requester)
            self._touched(responder, requester)
            if self._trusted(cursor, responder, requester):
                return TrustOutcome("trusted", changed=False)
            asked = cursor.execute(
                "SELECT 1 FROM trust_requests WHERE from_key = ? AND to_key = ?",
                (requester, responder),
            ).fetchone()
            if not approve:
                cursor.execute(
                    "DELETE FROM trust_requests WHERE from_key = ? AND to_key = ?",
                    (requester, responder),
                )
                return TrustOutcome("none", changed=False)
            if asked is None:
                raise NoRequest("this node has not asked for trust")
            self._establish(cursor, responder, requester, now)
        return TrustOutcome("trusted", changed=True)

    def untrust(self, key: bytes, other: bytes) -> TrustOutcome:
        """End the trust between the two and withdraw requests either way."""
        a, b = sorted((key, other))
        with self._transaction() as cursor:
            self._require(cursor, other)
            self._touched(key, other)
            revoked = cursor.execute(
                "DELETE FROM trusts WHERE key_a = ? AND key_b = ?", (a, b)
            ).rowcount
            self._delete_requests(cursor, a, b)
        return TrustOutcome("none", changed=bool(revoked))

    def is_trusted(self, key: bytes, other: bytes) -> bool:
        """Whether the two nodes trust each other."""
        return self._trusted(self._db, key, other)

    def trusted(self, key: bytes, limit: int = -1, offset: int = 0) -> list[NodeRecord]:
        """The nodes that `key` trusts, by hostname (`limit` of them from `offset`)."""
        rows = self._db.execute(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE public_key IN ("
            " SELECT key_b FROM trusts WHERE key_a = ?"
            " UNION SELECT key_a FROM trusts WHERE key_b = ?) ORDER BY hostname"
            " LIMIT ? OFFSET ?",
            (key, key, _rows(limit), offset),
        )
        return [self._record(row) for row in rows]

    def incoming(
        self, key: bytes, limit: int = -1, offset: int = 0
    ) -> list[tuple[NodeRecord, str]]:
        """The nodes asking `key` for trust, with their messages, oldest first."""
        rows = self._db.execute(
            f"SELECT {_N_NODE_COLUMNS}, r.message FROM nodes n"
            " JOIN trust_requests r ON r.from_key = n.public_key"
            " WHERE r.to_key = ? ORDER BY r.created, n.hostname LIMIT ? OFFSET ?",
            (key, _rows(limit), offset),
        )
        return [(self._record(row[:-1]), str(row[-1])) for row in rows]

    def outgoing(self, key: bytes, limit: int = -1, offset: int = 0) -> list[NodeRecord]:
        """The nodes `key` asked for trust that have not answered, oldest first."""
        rows = self._db.execute(
            f"SELECT {_N_NODE_COLUMNS} FROM nodes n"
            " JOIN trust_requests r ON r.to_key = n.public_key"
            " WHERE r.from_key = ? ORDER BY r.created, n.hostname LIMIT ? OFFSET ?",
            (key, _rows(limit), offset),
        )
        return [self._record(row) for row in rows]

    def trust_counts(self, key: bytes) -> tuple[int, int, int]:
        """How many nodes `key` trusts, are asking it, and it asked (in one query)."""
        row = self._db.execute(
            "SELECT (SELECT COUNT(*) FROM trusts WHERE key_a = ? OR key_b = ?),"
            " (SELECT COUNT(*) FROM trust_requests WHERE to_key = ?),"
            " (SELECT COUNT(*) FROM trust_requests WHERE from_key = ?)",
            (key, key, key, key),
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    @staticmethod
    def _keep_newest(
        cursor: Cursor, side: Literal["to_key", "from_key"], key: bytes, cap: int
    ) -> None:
        """Expire the oldest requests to (or from) `key` beyond the newest `cap`."""
        other = "from_key" if side == "to_key" else "to_key"
        cursor.execute(
            f"DELETE FROM trust_requests WHERE {side} = ? AND {other} NOT IN ("
            f" SELECT {other} FROM trust_requests WHERE {side} = ?"
            f" ORDER BY created DESC, {other} LIMIT ?)",
            (key, key, cap),
        )

    @staticmethod
    def _require(cursor: Cursor, key: bytes) -> None:
        if cursor.execute("SELECT 1 FROM nodes WHERE public_key = ?", (key,)).fetchone() is None:
            raise UnknownNode("no node has this key")

    @staticmethod
    def _trusted(cursor: Executor, key: bytes, other: bytes) -> bool:
        a, b = sorted((key, other))
        found = cursor.execute("SELECT 1 FROM trusts WHERE key_a = ? AND key_b = ?", (a, b))
        return found.fetchone() is not None

    @classmethod
    def _establish(cls, cursor: Cursor, key: bytes, other: bytes, now: float) -> None:
        a, b = sorted((key, other))
        cls._delete_requests(cursor, a, b)
        cursor.execute("INSERT INTO trusts (key_a, key_b, created) VALUES (?, ?, ?)", (a, b, now))

    @staticmethod
    def _delete_requests(cursor: Cursor, a: bytes, b: bytes) -> None:
        cursor.execute(
            "DELETE FROM trust_requests WHERE (from_key = ? AND to_key = ?)"
            " OR (from_key = ? AND to_key = ?)",
            (a, b, b, a),
        )


def _rows(limit: int) -> int:
    """A LIMIT value: `limit`, or every row for a negative one."""
    return limit if limit >= 0 else _NO_LIMIT


def _skip_reserved(address: int) -> int:
    """The first address at or after `address` whose last octet is neither 0 nor 255."""
    while address & _OCTET_MASK in _RESERVED_LAST_OCTETS:
        address += 1
    return address


def _record(row: tuple[Any, ...]) -> NodeRecord:
    key, hostname, ipv4, ipv6, tags, counter, endpoint, lan, last_seen, created = row[:10]
    network, granted, join_key, replica = row[10:]
    return NodeRecord(
        public_key=bytes(key),
        hostname=hostname,
        ipv4=IPv4Address(ipv4),
        ipv6=IPv6Address(ipv6),
        tags=tuple(json.loads(tags)),
        highest_counter=counter,
        endpoint=endpoint,
        lan_endpoints=tuple(json.loads(lan)),
        last_seen=last_seen,
        created=created,
        network=network,
        granted_tags=tuple(json.loads(granted)),
        join_key=join_key,
        replica=replica,
    )
