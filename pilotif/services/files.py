"""Files trusted peers send this node, under `STATE_DIR/received/`.

A file arrives into `received/.partial/ID.part` and is renamed to `received/ID-NAME` only
once its size and SHA-256 match what the sender announced; anything else (a connection
cut short, a wrong hash, a full disk) removes the partial file, so a file listed is always
whole. NAME is the sender's name reduced to a safe file name (its last path component,
letters, digits and `._-` only): no path the sender gives is ever used as a path here.
`received/index.jsonl` lists each file with its sender, size, hash and time.

Limits, checked before a byte arrives, count the files in flight by the sizes they
announced as well as the files kept (a file in flight holds its reservation until it is
kept or dropped): MAX_FILE_BYTES a file, MAX_PEER_BYTES and MAX_FILES_PER_PEER one
peer's files, MAX_TOTAL_BYTES and MAX_FILES all, MAX_IN_FLIGHT_PER_PEER transfers at once
from one peer (one peer's many empty files cannot use up MAX_FILES for the others); and
the disk must keep MIN_FREE_BYTES once every reservation is written.
"""

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from pilotif.util.errors import CodedError
from pilotif.util.files import append_private_file, read_state_file

RECEIVED_DIR: Final = "received"
PARTIAL_DIR: Final = ".partial"
INDEX_FILE: Final = "index.jsonl"
MAX_FILE_BYTES: Final = 1 << 30
MAX_PEER_BYTES: Final = 2 << 30
MAX_TOTAL_BYTES: Final = 4 << 30
MAX_FILES: Final = 10_000
MAX_FILES_PER_PEER: Final = 1_000
MAX_IN_FLIGHT_PER_PEER: Final = 4
MIN_FREE_BYTES: Final = 256 << 20
MAX_NAME_CHARS: Final = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FileRefused(CodedError):
    """A file this node does not take; `code` goes in the answer."""


@dataclass(frozen=True)
class ReceivedFile:
    """One whole file as listed in the index."""

    id: int
    sender: str
    name: str
    """The file name here, under received/."""
    size: int
    sha256: str
    received: float


def safe_name(name: str) -> str:
    """A file name from what a sender calls its file: never a path, never hidden."""
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", last).lstrip(".")[:MAX_NAME_CHARS]
    return cleaned or "file"


class Incoming:
    """A file on its way in: write its bytes, then `finish` (or `abort`)."""

    def __init__(
        self, store: "ReceivedFiles", file_id: int, sender: str, name: str, size: int, sha256: str
    ) -> None:
        self._store = store
        self.id = file_id
        self.sender = sender
        self.name = name
        self.size = size
        self.expected = sha256
        self.path = store.partial_dir / f"{file_id}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        self._file = os.fdopen(os.open(self.path, flags, 0o600), "wb")
        self._hash = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.written += len(data)

    def finish(self, now: float) -> ReceivedFile:
        """Keep the file if it is whole; FileRefused (and nothing kept) if not."""
        self._file.close()
        if self.written != self.size:
            self.abort()
            raise FileRefused("truncated", f"{self.written} of {self.size} bytes arrived")
        digest = self._hash.hexdigest()
        if digest != self.expected:
            self.abort()
            raise FileRefused("bad_hash", "the bytes do not have the SHA-256 announced")
        final = f"{self.id}-{self.name}"
        os.replace(self.path, self._store.root / final)
        received = ReceivedFile(self.id, self.sender, final, self.size, digest, now)
        self._store.add(received)
        self._store.release(self.id)
        return received

    def abort(self) -> None:
        """Drop what arrived, and its reservation."""
        self._file.close()
        self.path.unlink(missing_ok=True)
        self._store.release(self.id)


class ReceivedFiles:
    """received/ in a state dir; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / RECEIVED_DIR
        self.partial_dir = self.root / PARTIAL_DIR
        self.partial_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.partial_dir.iterdir():
            leftover.unlink()  # from a daemon that stopped during a transfer
        self.index_path = self.root / INDEX_FILE
        self._files = self._load()
        self._last_id = max((f.id for f in self._files), default=0)
        self._in_flight: dict[int, Incoming] = {}
        """The files on their way in, by id."""

    def _load(self) -> list[ReceivedFile]:
        files = []
        for line in (read_state_file(self.index_path) or "").splitlines():
            try:
                files.append(ReceivedFile(**json.loads(line)))
            except (TypeError, ValueError):
                continue
        return [f for f in files if (self.root / f.name).is_file()]

    def files(self) -> list[ReceivedFile]:
        """Every whole file kept, oldest first."""
        return list(self._files)

    def begin(self, sender: str, name: object, size: object, sha256: object) -> Incoming:
        """Make room for a file announced with these; FileRefused if it cannot be taken."""
        if not isinstance(name, str) or not isinstance(sha256, str) or type(size) is not int:
            raise FileRefused("bad_request", 'send {"op": "file", "name", "size", "sha256"}')
        if size < 0 or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise FileRefused("bad_request", "size is a byte count, sha256 64 hex digits")
        if size > MAX_FILE_BYTES:
            raise FileRefused("too_large", f"a file is at most {MAX_FILE_BYTES} bytes")
        in_flight = [i.size for i in self._in_flight.values() if i.sender == sender]
        if len(in_flight) >= MAX_IN_FLIGHT_PER_PEER:
            raise FileRefused(
                "too_many_transfers", f"at most {MAX_IN_FLIGHT_PER_PEER} files at once a peer"
            )
        reserved = self.reserved_bytes()
        kept = [f.size for f in self._files if f.sender == sender]
        if sum(kept) + sum(in_flight) + size > MAX_PEER_BYTES:
            raise FileRefused(
                "over_quota", f"this node keeps at most {MAX_PEER_BYTES} bytes a peer"
            )
        if len(kept) + len(in_flight) >= MAX_FILES_PER_PEER:
            raise FileRefused(
                "over_quota", f"this node keeps at most {MAX_FILES_PER_PEER} files a peer"
            )
        total = sum(f.size for f in self._files) + reserved
        if total + size > MAX_TOTAL_BYTES or len(self._files) + len(self._in_flight) >= MAX_FILES:
            raise FileRefused("no_space", "this node keeps no more received files: clear some")
        unwritten = sum(i.size - i.written for i in self._in_flight.values())
        if shutil.disk_usage(self.root).free - unwritten - size < MIN_FREE_BYTES:
            raise FileRefused("disk_full", "this node's disk has no room for that file")
        self._last_id += 1
        incoming = Incoming(self, self._last_id, sender, safe_name(name), size, sha256)
        self._in_flight[incoming.id] = incoming
        return incoming

    def release(self, file_id: int) -> None:
        """Give back a file's reservation (kept or dropped; twice is harmless)."""
        self._in_flight.pop(file_id, None)

    def reserved_bytes(self) -> int:
        """The sizes announced by the files on their way in."""
        return sum(incoming.size for incoming in self._in_flight.values())

    def add(self, received: ReceivedFile) -> None:
        self._files.append(received)
        with append_private_file(self.index_path) as index:
            index.write((json.dumps(asdict(received)) + "\n").encode())
