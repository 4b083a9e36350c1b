"""The two databases the registry's store runs on: a SQLite file (the default) and a
PostgreSQL server (`--database postgresql://...`, for several replicas).

Both take the same SQL, written with `?` placeholders and the types `{bytes}` and
`{float}` (BLOB or BYTEA, REAL or DOUBLE PRECISION); a `Database` translates what
differs (placeholders, type names, how a write transaction excludes other writers,
how columns are listed). Every write
transaction is exclusive: SQLite's `BEGIN IMMEDIATE`, and on PostgreSQL an advisory
lock that every replica takes, so that replicas allocate addresses and names one
after another as one process does.
"""

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeGuard
from urllib.parse import unquote

POSTGRESQL_SCHEMES: Final = ("postgresql://", "postgres://")
_DB_FILE_MODE: Final = 0o600
_WRITE_LOCK: Final = 0x70696C6F74
"""The PostgreSQL advisory lock every write transaction holds ("pilot")."""
_CONNECT_TIMEOUT_S: Final = 5
_RECONNECT_S: Final = 1.0
"""A lost connection (the server restarted) is made again at most this often."""
_MASK: Final = "***"
_PASSWORD_KEYS: Final = frozenset({"password", "sslpassword"})
"""The connection parameters of libpq that hold a secret."""
_KEY_VALUE_PASSWORD: Final = re.compile(
    r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE
)
"""`password=secret` or `password = 'a secret'` in a libpq key=value string."""


class DatabaseError(Exception):
    """The database cannot be opened or used: one line that says why and what to do."""


class Cursor(Protocol):
    """What the store needs of a cursor (sqlite3's and psycopg's both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> "Cursor": ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Executor(Protocol):
    """Anything that runs a statement: a cursor in a transaction, or the database."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class Database(Protocol):
    """A connection the store reads through and writes in transactions."""

    types: dict[str, str]
    """The engine's name for each type the schema spells `{bytes}` and `{float}`, and
    `{serial}` for a rising integer key."""
    shared: bool
    """Whether other registry processes write it and say so (notifications): reads then
    cost a round trip, and what this process remembers of them must be let go."""

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        """Run one statement outside a transaction (reads)."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[Cursor]:
        """One write transaction that no other writer runs beside."""
        ...

    def columns(self, cursor: Cursor, table: str) -> set[str]:
        """The column names of `table`."""
        ...

    def keep_private(self, cursor: Cursor, table: str) -> None:
        """Let no database role but the owner (the registry's) use `table`."""
        ...

    def notify(self, channel: str, payload: str) -> None:
        """Send a notification to whoever listens on `channel`."""
        ...

    def listen(self, channel: str) -> int | None:
        """Listen on `channel`; a file descriptor readable when notifications wait (None
        if this database has no notifications)."""
        ...

    def notifications(self) -> list[tuple[str, str]]:
        """The (channel, payload) pairs received since the last call (never blocks)."""
        ...

    def changed_elsewhere(self) -> bool:
        """Whether another connection may have committed a change since the last call
        (one that is not announced by a notification)."""
        ...

    def close(self) -> None: ...


def is_postgresql(location: str | Path) -> TypeGuard[str]:
    """Whether `location` names a PostgreSQL server rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(POSTGRESQL_SCHEMES)


def open_database(location: str | Path) -> Database:
    """The SQLite file at `location`, or the PostgreSQL database its URL names."""
    if is_postgresql(location):
        return PostgresDatabase(location)
    return SqliteDatabase(Path(location))


class SqliteDatabase:
    """A SQLite file (WAL, so that `registry admin` reads while the registry runs)."""

    def __init__(self, path: Path) -> None:
        self.types = {"bytes": "BLOB", "float": "REAL", "serial": "INTEGER PRIMARY KEY"}
        self.shared = False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, _DB_FILE_MODE))
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._data_version = -1
        """The file's `data_version` when `changed_elsewhere` last read it."""

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        return self._db.execute(sql, parameters)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        cursor = self._db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def columns(self, cursor: Cursor, table: str) -> set[str]:
        return {row[1] for row in cursor.execute(f"PRAGMA table_info({table})")}

    def keep_private(self, cursor: Cursor, table: str) -> None:
        """A SQLite file has no roles: its mode (0600) keeps it private."""

    def notify(self, channel: str, payload: str) -> None:
        """One process uses a SQLite file: there are no other replicas to tell."""

    def listen(self, channel: str) -> int | None:
        return None

    def notifications(self) -> list[tuple[str, str]]:
        return []

    def changed_elsewhere(self) -> bool:
        """SQLite's `data_version` changes when another connection (`registry admin`, in
        its own process) commits, never for this connection's own commits."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self._data_version
        self._data_version = version
        return changed

    def close(self) -> None:
        self._db.close()


class _PostgresCursor:
    """A psycopg cursor that takes the store's `?` placeholders."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> "_PostgresCursor":
        self._cursor.execute(_placeholders(sql), parameters)
        return self

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        rows = list(parameters)
        if rows:
            self._cursor.executemany(_placeholders(sql), rows)

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)


def _placeholders(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase:
    """A database on a PostgreSQL server, through psycopg 3."""

    def __init__(self, url: str) -> None:
        self.types = {
            "bytes": "BYTEA",
            "float": "DOUBLE PRECISION",
            "serial": "BIGSERIAL PRIMARY KEY",
        }
        self.shared = True
        try:
            import psycopg
        except ImportError:
            raise DatabaseError(
                "PostgreSQL needs psycopg: pip install 'pilotif[postgresql]'"
            ) from None
        self._errors = psycopg.Error
        self._url = url
        self._db = _connect(url)
        self._reconnect_at = 0.0
        self._listener: Any = None
        """A second connection that only listens (notifications arrive between queries)."""

    def _connection(self) -> Any:
        """The connection, made again if the server dropped it (a restart, a failover):
        at most every _RECONNECT_S, DatabaseError until it answers."""
        if not self._db.closed:
            return self._db
        now = time.monotonic()
        if now < self._reconnect_at:
            raise DatabaseError(f"the database {without_password(self._url)} is unreachable")
        self._reconnect_at = now + _RECONNECT_S
        self._db = _connect(self._url)
        return self._db

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        try:
            return _PostgresCursor(self._connection().cursor()).execute(sql, parameters)
        except self._errors as error:
            raise _lost(self._url, error) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        try:
            with self._connection().transaction():
                cursor = _PostgresCursor(self._db.cursor())
                cursor.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))
                yield cursor
        except self._errors as error:
            raise _lost(self._url, error) from None

    def columns(self, cursor: Cursor, table: str) -> set[str]:
        rows = cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {str(name) for (name,) in rows}

    def keep_private(self, cursor: Cursor, table: str) -> None:
        # PUBLIC has no rights on a new table by default; an operator's default
        # privileges might grant some, and any role that may connect is PUBLIC.
        cursor.execute(f"REVOKE ALL ON TABLE {table} FROM PUBLIC")

    def notify(self, channel: str, payload: str) -> None:
        self.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def listen(self, channel: str) -> int | None:
        if self._listener is None:
            self._listener = _connect(self._url)
        self._listener.execute(f'LISTEN "{channel}"')
        return int(self._listener.fileno())

    def notifications(self) -> list[tuple[str, str]]:
        if self._listener is None:
            return []
        # libpq directly: psycopg's notifies(timeout=0) neither reads what consume_input
        # queued nor notices a closed connection (the socket then stays readable).
        connection = self._listener.pgconn
        try:
            connection.consume_input()
        except self._errors as error:
            # `listen` connects again (the server may be back by then).
            self._listener.close()
            self._listener = None
            raise DatabaseError(
                f"the database stopped sending notifications: {_first_line(error)}"
            ) from None
        received = []
        while (note := connection.notifies()) is not None:
            received.append((note.relname.decode(), note.extra.decode()))
        return received

    def changed_elsewhere(self) -> bool:
        """Other replicas announce what they change (NODE_CHANNEL)."""
        return False

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._db.close()


def _connect(url: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)
    except psycopg.Error as error:
        raise DatabaseError(
            f"cannot reach the database {without_password(url)}: {_first_line(error)}"
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _lost(url: str, error: Exception) -> DatabaseError:
    """What a failed statement raises: one line, the password masked."""
    return DatabaseError(f"the database {without_password(url)} failed: {_first_line(error)}")


def without_password(location: str) -> str:
    """The database's location as it may be logged: the password of `user:secret@`, of
    a `password=` or `sslpassword=` query parameter, and of the same keys in a libpq
    `key=value` string becomes ***."""
    scheme, separator, rest = location.partition("://")
    if not separator:
        return _KEY_VALUE_PASSWORD.sub(rf"\g<1>{_MASK}", location)
    address, question, query = rest.partition("?")
    authority, slash, path = address.partition("/")
    credentials, at, host = authority.rpartition("@")
    if at and ":" in credentials:
        authority = f"{credentials.split(':', 1)[0]}:{_MASK}@{host}"
    query = "&".join(_masked_parameter(item) for item in query.split("&"))
    return f"{scheme}://{authority}{slash}{path}{question}{query}"


def _masked_parameter(item: str) -> str:
    name, equals, _ = item.partition("=")
    if equals and unquote(name).strip().lower() in _PASSWORD_KEYS:
        return f"{name}={_MASK}"
    return item
