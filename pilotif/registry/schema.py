"""The registry's schema and its migrations, shared by SQLite and PostgreSQL.

A database holds its schema version in `schema_version`; `migrate` brings it to
SCHEMA_VERSION one step at a time in one exclusive transaction (replicas that start
together migrate once), and refuses a database of a newer version without writing.
Types are spelled `{bytes}` and `{float}` (see pilotif.registry.database).
"""

from collections.abc import Callable
from typing import Final

from pilotif.registry.database import Cursor, Database, DatabaseError

_FIRST_TABLES: Final = (
    """
    CREATE TABLE IF NOT EXISTS nodes (
        public_key {bytes} PRIMARY KEY,
        hostname TEXT NOT NULL UNIQUE,
        ipv4 BIGINT NOT NULL UNIQUE,
        ipv6 TEXT NOT NULL UNIQUE,
        tags TEXT NOT NULL,
        highest_counter BIGINT NOT NULL,
        endpoint TEXT,
        lan_endpoints TEXT NOT NULL,
        last_seen {float},
        created {float} NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS trust_requests (
        from_key {bytes} NOT NULL REFERENCES nodes (public_key) ON DELETE CASCADE,
        to_key {bytes} NOT NULL REFERENCES nodes (public_key) ON DELETE CASCADE,
        message TEXT NOT NULL,
        created {float} NOT NULL,
        PRIMARY KEY (from_key, to_key)
    )
    """,
    "CREATE INDEX IF NOT EXISTS trust_requests_to ON trust_requests (to_key)",
    """
    CREATE TABLE IF NOT EXISTS trusts (
        key_a {bytes} NOT NULL REFERENCES nodes (public_key) ON DELETE CASCADE,
        key_b {bytes} NOT NULL REFERENCES nodes (public_key) ON DELETE CASCADE,
        created {float} NOT NULL,
        PRIMARY KEY (key_a, key_b),
        CHECK (key_a < key_b)
    )
    """,
    "CREATE INDEX IF NOT EXISTS trusts_b ON trusts (key_b)",
    """
    CREATE TABLE IF NOT EXISTS networks (
        name TEXT PRIMARY KEY,
        closed INTEGER NOT NULL,
        created {float} NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS join_keys (
        id TEXT PRIMARY KEY,
        digest {bytes} NOT NULL,
        network TEXT REFERENCES networks (name),
        tags TEXT NOT NULL,
        reusable INTEGER NOT NULL,
        expires {float},
        uses INTEGER NOT NULL,
        revoked INTEGER NOT NULL,
        created {float} NOT NULL
    )
    """,
)
_NETWORK_COLUMNS: Final = (
    ("network", "TEXT"),
    ("granted_tags", "TEXT NOT NULL DEFAULT '[]'"),
    ("join_key", "TEXT"),
    ("session", "BIGINT"),
)
"""Columns of `nodes` that networks, join keys and sessions added (databases of
before the schema version existed may have some of them)."""
_NETWORK_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS nodes_network ON nodes (network)",
    "CREATE INDEX IF NOT EXISTS nodes_last_seen ON nodes (last_seen)",
)
_IDENTITY_TABLE: Final = """
    CREATE TABLE IF NOT EXISTS registry_identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        private_key {bytes} NOT NULL,
        created {float} NOT NULL
    )
"""
"""The registry's key, kept in the database that replicas share."""
_REPLICAS_TABLE: Final = """
    CREATE TABLE IF NOT EXISTS replicas (
        name TEXT PRIMARY KEY,
        alive {float} NOT NULL
    )
"""
"""The registry replicas on this database and when each last said it is alive (a node's
`replica` column names the one it talks to)."""
_NOTES_TABLE: Final = (
    """
    CREATE TABLE IF NOT EXISTS replica_notes (
        id {serial},
        replica TEXT NOT NULL,
        note TEXT NOT NULL,
        created {float} NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS replica_notes_replica ON replica_notes (replica)",
)
"""What one replica tells another (a push for a node it has, a trust change): the
notification that wakes the other says nothing, since any role that may connect to the
database may NOTIFY (and LISTEN); only the registry's role writes and reads this."""
_PRIVATE_TABLES: Final = (
    "schema_version",
    "nodes",
    "trust_requests",
    "trusts",
    "networks",
    "join_keys",
    "registry_identity",
    "replicas",
    "replica_notes",
)


def _first_tables(db: Database, cursor: Cursor) -> None:
    for statement in _FIRST_TABLES:
        cursor.execute(statement.format(**db.types))


def _add_node_columns(db: Database, cursor: Cursor, columns: tuple[tuple[str, str], ...]) -> None:
    """Add the columns `nodes` lacks (a database from before schema versions may have
    some of them)."""
    present = db.columns(cursor, "nodes")
    for name, definition in columns:
        if name not in present:
            cursor.execute(f"ALTER TABLE nodes ADD COLUMN {name} {definition}")


def _networks(db: Database, cursor: Cursor) -> None:
    _add_node_columns(db, cursor, _NETWORK_COLUMNS)
    for statement in _NETWORK_INDEXES:
        cursor.execute(statement)


def _identity(db: Database, cursor: Cursor) -> None:
    cursor.execute(_IDENTITY_TABLE.format(**db.types))


def _replicas(db: Database, cursor: Cursor) -> None:
    _add_node_columns(db, cursor, (("replica", "TEXT"),))
    cursor.execute(_REPLICAS_TABLE.format(**db.types))


def _replica_notes(db: Database, cursor: Cursor) -> None:
    for statement in _NOTES_TABLE:
        cursor.execute(statement.format(**db.types))
    for table in _PRIVATE_TABLES:
        db.keep_private(cursor, table)


_MIGRATIONS: Final[tuple[Callable[[Database, Cursor], None], ...]] = (
    _first_tables,
    _networks,
    _identity,
    _replicas,
    _replica_notes,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


def migrate(db: Database) -> None:
    """Bring the database to SCHEMA_VERSION; DatabaseError (nothing written) if it is
    newer than that."""
    with db.transaction() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = cursor.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = int(row[0]) if row is not None and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"the database's schema is version {version}, newer than this pilotif's"
                f" ({SCHEMA_VERSION}): upgrade pilotif on this host"
            )
        for step in _MIGRATIONS[version:]:
            step(db, cursor)
        if version < SCHEMA_VERSION:
            cursor.execute("DELETE FROM schema_version")
            cursor.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
