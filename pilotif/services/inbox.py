"""The inbox: messages trusted peers sent this node, kept in the services' store
(pilotif.services.store: written off the event loop) so they survive restarts, and in
memory for reading.

Quotas keep one peer from pushing the others out: a peer keeps at most
MAX_MESSAGES_PER_PEER messages and MAX_BYTES_PER_PEER bytes of text (past either, its own
oldest go); past MAX_MESSAGES or MAX_BYTES in all, the oldest message of the peer that
holds the most goes. A peer that holds less than another is never pushed out by it.

An `inbox.jsonl` of an older pilotif (one JSON object a line) is read once into the
store at start, then removed.
"""

import json
from collections import Counter, deque
from dataclasses import astuple, dataclass
from typing import Any, Final

from pilotif.services.store import ServiceStore, Statement, storable
from pilotif.util.files import StateFileError, read_state_file

LEGACY_INBOX_FILE: Final = "inbox.jsonl"
MAX_MESSAGES: Final = 1000
MAX_BYTES: Final = 16 * 1024 * 1024
MAX_MESSAGES_PER_PEER: Final = 200
MAX_BYTES_PER_PEER: Final = 4 * 1024 * 1024
_FIELDS: Final = ("id", "sender", "received", "text")
_INSERT: Final = "INSERT OR IGNORE INTO messages (id, sender, received, text) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class Message:
    """One message as received."""

    id: int
    sender: str
    """The trusted peer's hostname."""
    received: float
    """Unix seconds."""
    text: str


@dataclass(frozen=True)
class InboxLimits:
    """How much the inbox keeps, in all and of one peer."""

    max_messages: int = MAX_MESSAGES
    max_bytes: int = MAX_BYTES
    max_messages_per_peer: int = MAX_MESSAGES_PER_PEER
    max_bytes_per_peer: int = MAX_BYTES_PER_PEER


class Inbox:
    """The messages of one node; see the module docstring."""

    def __init__(self, store: ServiceStore, limits: InboxLimits = InboxLimits()) -> None:
        self._store = store
        self._limits = limits
        self._messages: dict[int, Message] = {}
        """id -> message, oldest first."""
        self._of_peer: dict[str, deque[int]] = {}
        """sender -> the ids of its messages, oldest first."""
        self._bytes: Counter[str] = Counter()
        self._total_bytes = 0
        self._migrate_legacy()
        for row in store.rows("SELECT id, sender, received, text FROM messages ORDER BY id"):
            message = _message(row)
            if message is None:
                raise StateFileError(store.damaged())
            self._keep(message)
        (sequence,) = store.rows(
            "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'messages'"
        )
        self._last_id = max([int(sequence[0]), *self._messages])
        for sender in list(self._of_peer):
            self._evict(sender)

    def _migrate_legacy(self) -> None:
        legacy = self._store.root / LEGACY_INBOX_FILE
        text = read_state_file(legacy)
        if text is None:
            return
        statements: list[Statement] = []
        for line in text.splitlines():
            try:
                fields = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash: the rest is good
            message = (
                _message(tuple(fields.get(k) for k in _FIELDS))
                if isinstance(fields, dict)
                else None
            )
            if message is not None:
                statements.append((_INSERT, astuple(message)))
        self._store.write_now(statements)
        legacy.unlink()

    def add(self, sender: str, text: str, now: float) -> Message:
        """Keep a message (queued for the store before this returns)."""
        self._last_id += 1
        message = Message(self._last_id, sender, now, storable(text))
        self._keep(message)
        self._store.write(_INSERT, astuple(message))
        self._evict(sender)
        return message

    def messages(self) -> list[Message]:
        """Every message kept, oldest first."""
        return list(self._messages.values())

    def clear(self) -> int:
        """Forget every message; how many there were."""
        count = len(self._messages)
        self._messages.clear()
        self._of_peer.clear()
        self._bytes.clear()
        self._total_bytes = 0
        self._store.write("DELETE FROM messages")
        return count

    def _keep(self, message: Message) -> None:
        size = len(message.text.encode())
        self._messages[message.id] = message
        self._of_peer.setdefault(message.sender, deque()).append(message.id)
        self._bytes[message.sender] += size
        self._total_bytes += size

    def _evict(self, sender: str) -> None:
        """Drop the oldest messages past the quotas: the sender's own past its share,
        then the heaviest peer's past the totals."""
        limits = self._limits
        while self._of_peer.get(sender) and (
            len(self._of_peer[sender]) > limits.max_messages_per_peer
            or self._bytes[sender] > limits.max_bytes_per_peer
        ):
            self._drop_oldest(sender)
        while len(self._messages) > limits.max_messages:
            self._drop_oldest(max(self._of_peer, key=lambda p: len(self._of_peer[p])))
        while self._total_bytes > limits.max_bytes:
            self._drop_oldest(max(self._of_peer, key=self._bytes.__getitem__))

    def _drop_oldest(self, sender: str) -> None:
        ids = self._of_peer[sender]
        message = self._messages.pop(ids.popleft())
        size = len(message.text.encode())
        self._bytes[sender] -= size
        if not ids:
            del self._of_peer[sender], self._bytes[sender]
        self._total_bytes -= size
        self._store.write("DELETE FROM messages WHERE id = ?", (message.id,))


def _message(values: tuple[Any, ...]) -> Message | None:
    """A message from its fields in order, None if they are not one."""
    if len(values) != 4:
        return None
    id_, sender, received, text = values
    if not (
        isinstance(id_, int)
        and isinstance(sender, str)
        and isinstance(received, int | float)
        and isinstance(text, str)
    ):
        return None
    return Message(id_, sender, float(received), storable(text))
