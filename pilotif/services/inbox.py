"""The inbox: messages trusted peers sent this node, kept in `STATE_DIR/inbox.jsonl` (one
JSON object a line, appended; never through a symlink) so they survive restarts. The
newest MAX_MESSAGES stay: past that, the file is rewritten without the oldest."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from pilotif.identity import append_private_file, read_state_file, write_private_file

INBOX_FILE: Final = "inbox.jsonl"
MAX_MESSAGES: Final = 1000


@dataclass(frozen=True)
class Message:
    """One message as received."""

    id: int
    sender: str
    """The trusted peer's hostname."""
    received: float
    """Unix seconds."""
    text: str


class Inbox:
    """The messages of one node; see the module docstring."""

    def __init__(self, state_dir: Path, max_messages: int = MAX_MESSAGES) -> None:
        self.path = state_dir / INBOX_FILE
        self._max = max_messages
        self._messages = self._load()
        self._last_id = self._messages[-1].id if self._messages else 0

    def _load(self) -> list[Message]:
        text = read_state_file(self.path) or ""
        messages = []
        for line in text.splitlines():
            try:
                messages.append(Message(**json.loads(line)))
            except (TypeError, ValueError):
                continue  # a line cut short by a crash: the rest is good
        return messages

    def add(self, sender: str, text: str, now: float) -> Message:
        """Keep a message (written before this returns)."""
        self._last_id += 1
        message = Message(self._last_id, sender, now, text)
        self._messages.append(message)
        if len(self._messages) > self._max:
            self._messages = self._messages[-self._max :]
            self._rewrite()
        else:
            with append_private_file(self.path) as file:
                file.write(_line(message).encode())
        return message

    def messages(self) -> list[Message]:
        """Every message kept, oldest first."""
        return list(self._messages)

    def clear(self) -> int:
        """Forget every message; how many there were."""
        count = len(self._messages)
        self._messages = []
        self._rewrite()
        return count

    def _rewrite(self) -> None:
        write_private_file(self.path, "".join(_line(m) for m in self._messages))


def _line(message: Message) -> str:
    return json.dumps(asdict(message), ensure_ascii=False) + "\n"
