"""The agent services' storage: the inbox's messages and the tasks in one SQLite file,
STATE_DIR/services.db (WAL, mode 0600, never opened through a symbolic link).

The services run on the event loop the packet pump shares, so nothing here writes on it:
`write` queues a statement and returns at once; one thread of the store's own runs the
queued statements in order, those queued together in one transaction. `flush` waits
until every queued write is committed; `close` flushes and stops the thread. A write that
fails (a full disk) is counted and logged once until writes succeed again; the services
carry on from what they hold in memory.

Reads come from memory too: the inbox and the task store load their rows once, at start
(`rows`), and keep them. Text from peers is made storable (`storable`) before it is kept:
a lone surrogate (JSON's `"\\ud800"`) cannot be encoded as UTF-8, and would make every
write that carries it fail.
"""

import logging
import queue
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pilotif.util.files import StateFileError, append_private_file
from pilotif.util.logs import log_event

STORE_FILE: Final = "services.db"
SCHEMA_VERSION: Final = 1
MAX_WRITES_PER_TRANSACTION: Final = 500
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " sender TEXT NOT NULL, received REAL NOT NULL, text TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, role TEXT NOT NULL,"
    " peer TEXT NOT NULL, description TEXT NOT NULL, state TEXT NOT NULL,"
    " created REAL NOT NULL, updated REAL NOT NULL, result TEXT, reason TEXT,"
    " notified INTEGER NOT NULL)",
)
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
Statement = tuple[str, Sequence[Any]]
"""SQL and its parameters."""


def storable(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (a Python string holds a
    surrogate only when it is lone: a JSON pair decodes to one character)."""
    return _LONE_SURROGATE.sub("\ufffd", text)


class ServiceStore:
    """STATE_DIR/services.db and its writer thread; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.path = state_dir / STORE_FILE
        self.counters: Counter[str] = Counter()
        """Writes that failed, by reason."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        append_private_file(self.path).close()  # created 0600; StateFileError on a link
        self._lock = threading.Lock()
        """Held while the connection is used (the writer thread, or a read at start)."""
        self._db = self._open()
        self._queue: queue.SimpleQueue[Statement | None] = queue.SimpleQueue()
        self._written = threading.Condition()
        self._queued_count = 0
        self._done_count = 0
        self._failing = False
        self._thread = threading.Thread(
            target=self._write_queued, name="pilotif-services-store", daemon=True
        )
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise StateFileError(f"cannot open {self.path}: {error}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateFileError(
                    f"{self.path} was written by a newer pilotif; upgrade pilotif, or move "
                    "the file away (the messages and tasks it holds are then lost)"
                )
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error:
            db.close()
            raise StateFileError(self.damaged()) from None
        return db

    def damaged(self) -> str:
        """What to say of a store that cannot be read."""
        return (
            f"{self.path} is not a pilotif services store (damaged?); move it away and run "
            "`pilotif up` again (the messages and tasks it held are then lost)"
        )

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of a query, read now (at start: later reads come from memory);
        StateFileError if the file cannot be read."""
        try:
            with self._lock:
                return self._db.execute(sql, parameters).fetchall()
        except sqlite3.Error:
            raise StateFileError(self.damaged()) from None

    def write_now(self, statements: Sequence[Statement]) -> None:
        """Run `statements` in one transaction on this thread (at start only: a
        migration); StateFileError if they fail."""
        try:
            with self._lock:
                self._apply(statements)
        except sqlite3.Error as error:
            raise StateFileError(f"cannot write {self.path}: {error}") from None

    def write(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        """Queue one statement for the writer thread; returns at once."""
        with self._written:
            self._queued_count += 1
        self._queue.put((sql, parameters))

    def flush(self) -> None:
        """Wait until every write queued so far is committed (or failed)."""
        with self._written:
            target = self._queued_count
            self._written.wait_for(lambda: self._done_count >= target)

    def close(self) -> None:
        """Commit what is queued, stop the writer thread and close the file."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join()
        self._db.close()

    def _write_queued(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_WRITES_PER_TRANSACTION:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write_batch(batch)
            if stop:
                return

    def _write_batch(self, batch: list[Statement]) -> None:
        """Commit `batch` in one transaction; if it fails, each statement alone (a bad
        write loses only itself)."""
        if not self._committed(batch) and len(batch) > 1:
            for statement in batch:
                self._committed([statement])
        with self._written:
            self._done_count += len(batch)
            self._written.notify_all()

    def _committed(self, batch: Sequence[Statement]) -> bool:
        """Whether `batch` was committed; a failure is counted, and logged once until a
        write succeeds again."""
        try:
            with self._lock:
                self._apply(batch)
        except Exception as error:  # the thread must outlive any write, or flush waits forever
            if len(batch) == 1:  # a longer batch is tried again statement by statement
                self.counters["write_failed"] += 1
            if not self._failing:
                log_event(
                    "services_store_write_failed",
                    level=logging.WARNING,
                    path=str(self.path),
                    error=str(error),
                )
            self._failing = True
            return False
        if self._failing:
            log_event("services_store_writing_again", path=str(self.path))
        self._failing = False
        return True

    def _apply(self, batch: Sequence[Statement]) -> None:
        """Run `batch` in one transaction (the lock held); if anything fails, the COMMIT
        too (a full disk), nothing of it stays and no transaction is left open (SQLite may
        or may not have rolled back already: an open one would refuse every later BEGIN)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, parameters in batch:
                self._db.execute(sql, parameters)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
