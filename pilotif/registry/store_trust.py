"""The store's trust tables: requests (a bounded number per node, either way) and the
trusts they become when answered or crossed."""

from typing import Final, Literal

from pilotif.registry.database import Cursor, Executor
from pilotif.registry.records import (
    N_NODE_COLUMNS,
    NODE_COLUMNS,
    NodeRecord,
    NoRequest,
    StoreError,
    TrustOutcome,
    UnknownNode,
    row_limit,
)
from pilotif.registry.store_base import StoreBase

MAX_PENDING_PER_TARGET: Final = 100
"""Unanswered trust requests one node may hold; a newer one expires the oldest."""
MAX_PENDING_PER_REQUESTER: Final = 50
"""Unanswered trust requests one node may have out; a newer one expires its oldest."""


class TrustTables(StoreBase):
    """See the module docstring."""

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
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE public_key IN ("
            " SELECT key_b FROM trusts WHERE key_a = ?"
            " UNION SELECT key_a FROM trusts WHERE key_b = ?) ORDER BY hostname"
            " LIMIT ? OFFSET ?",
            (key, key, row_limit(limit), offset),
        )
        return [self._record(row) for row in rows]

    def incoming(
        self, key: bytes, limit: int = -1, offset: int = 0
    ) -> list[tuple[NodeRecord, str]]:
        """The nodes asking `key` for trust, with their messages, oldest first."""
        rows = self._db.execute(
            f"SELECT {N_NODE_COLUMNS}, r.message FROM nodes n"
            " JOIN trust_requests r ON r.from_key = n.public_key"
            " WHERE r.to_key = ? ORDER BY r.created, n.hostname LIMIT ? OFFSET ?",
            (key, row_limit(limit), offset),
        )
        return [(self._record(row[:-1]), str(row[-1])) for row in rows]

    def outgoing(self, key: bytes, limit: int = -1, offset: int = 0) -> list[NodeRecord]:
        """The nodes `key` asked for trust that have not answered, oldest first."""
        rows = self._db.execute(
            f"SELECT {N_NODE_COLUMNS} FROM nodes n"
            " JOIN trust_requests r ON r.to_key = n.public_key"
            " WHERE r.from_key = ? ORDER BY r.created, n.hostname LIMIT ? OFFSET ?",
            (key, row_limit(limit), offset),
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
