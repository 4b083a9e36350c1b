"""State files: written atomically with mode 0600 (temp file and rename), and never read
or appended through a symbolic link; a file that cannot be used is one StateFileError that
names it and says what to do."""

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Final

PRIVATE_FILE_MODE: Final = 0o600


class StateFileError(Exception):
    """A state file that cannot be used; the message names it and says what to do."""


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename), readable by the owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _open_no_follow(path: Path, flags: int) -> int:
    """`os.open` that never follows a symbolic link at `path` (new files get mode 0600);
    FileNotFoundError passes through, any other failure is a StateFileError."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise StateFileError(
                f"{path} is a symbolic link; pilotif does not follow links there"
            ) from None
        raise StateFileError(f"cannot open {path}: {error.strerror}") from None


def read_state_file(path: Path) -> str | None:
    """The text of a state file, None if it does not exist; StateFileError if it is a
    symbolic link (never followed) or cannot be read."""
    try:
        fd = _open_no_follow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise StateFileError(f"cannot read {path}: {error}") from None


def append_private_file(path: Path) -> BinaryIO:
    """`path` opened for appending (created with mode 0600); StateFileError if it is a
    symbolic link (never followed) or cannot be opened."""
    try:
        fd = _open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except FileNotFoundError as error:
        raise StateFileError(f"cannot open {path}: {error.strerror}") from None
    return os.fdopen(fd, "ab")
