"""The one directory the MCP tool `send_file` may read (`pilotif mcp --files-from DIR`).

A path given by the client (relative to the directory, or absolute inside it) is opened
one component at a time from a descriptor of the directory held since the start, with
O_NOFOLLOW: no `..`, no symbolic link (even one that points inside), nothing but a regular
file, and no file with another name (a hard link: where the kernel lets users link files
they do not own, fs.protected_hardlinks=0, one could name the node's key inside). The
sender then reads exactly the file that was checked (through a link of our own to
/proc/self/fd, in a private temporary directory), so swapping a name for a link after the
check, by anyone who may write in the directory, reaches nothing else.
"""

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import Final

_DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""O_NONBLOCK: opening a FIFO must not hang the server (it is refused once open)."""
_PINNED_DIR_PREFIX: Final = "pilotif-send-"


class FileRefused(Exception):
    """A path send_file may not read; the message names it and says why."""


class FilesFrom:
    """The directory send_file reads from; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(os.path.realpath(directory))
        self._given = Path(os.path.abspath(directory))
        try:
            self._fd = os.open(self.directory, _DIRECTORY_FLAGS)
        except OSError as error:
            raise FileRefused(f"--files-from {directory}: {error.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)

    def _parts(self, path: str) -> tuple[str, ...]:
        """The components of `path` below the directory, or FileRefused."""
        pure = PurePosixPath(path)
        if pure.is_absolute():
            for base in (self.directory, self._given):
                if pure.is_relative_to(base):
                    pure = pure.relative_to(base)
                    break
            else:
                raise FileRefused(f"{path} is outside {self.directory}")
        parts = pure.parts
        if not parts or ".." in parts:
            raise FileRefused(f"{path!r} does not name a file inside {self.directory}")
        return parts

    @contextmanager
    def opened(self, path: str) -> Iterator[Path]:
        """A path that opens exactly the regular file `path` names inside the directory
        (valid inside the `with`), or FileRefused."""
        parts = self._parts(path)
        with ExitStack() as stack:
            fd = self._fd
            try:
                for index, part in enumerate(parts):
                    last = index == len(parts) - 1
                    fd = os.open(part, _FILE_FLAGS if last else _DIRECTORY_FLAGS, dir_fd=fd)
                    stack.callback(os.close, fd)
            except OSError as error:
                raise FileRefused(_refusal(path, error)) from None
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise FileRefused(f"{path} is not a regular file")
            if status.st_nlink != 1:
                raise FileRefused(
                    f"{path} has other names (hard links); send_file sends a file with one"
                    " name only: copy it into the directory"
                )
            private = stack.enter_context(tempfile.TemporaryDirectory(prefix=_PINNED_DIR_PREFIX))
            pinned = Path(private) / parts[-1]
            os.symlink(f"/proc/self/fd/{fd}", pinned)
            yield pinned


def _refusal(path: str, error: OSError) -> str:
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{path} goes through a symbolic link or non-directory; send_file follows none"
    return f"{path}: {error.strerror}"
