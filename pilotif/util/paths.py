"""Where a daemon keeps its files: everything lives under one state directory.

Two daemons with different state directories never share a file, so several can
run on one machine (one per network namespace).
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pilotif.util.files import StateFileError

DEFAULT_STATE_DIR = Path("/var/lib/pilotif")
"""Root's state directory."""
STATE_DIR_ENV = "PILOTIF_STATE_DIR"
XDG_STATE_HOME_ENV = "XDG_STATE_HOME"
USER_STATE_HOME = Path(".local/state")
"""Under the home directory: where XDG_STATE_HOME defaults to."""
_STATE_DIR_MODE = 0o700
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_ROOT_UID = 0


def default_state_dir() -> Path:
    """Root's DEFAULT_STATE_DIR; any other user's $XDG_STATE_HOME/pilotif, else
    ~/.local/state/pilotif (a userspace node, `up --userspace`)."""
    if os.geteuid() == _ROOT_UID:
        return DEFAULT_STATE_DIR
    home = os.environ.get(XDG_STATE_HOME_ENV) or str(Path.home() / USER_STATE_HOME)
    return Path(home) / "pilotif"


@dataclass(frozen=True)
class StatePaths:
    """The files of one daemon."""

    root: Path

    @property
    def pid_file(self) -> Path:
        """Holds the daemon's process id while it runs."""
        return self.root / "pilotif.pid"

    @property
    def log_file(self) -> Path:
        """The daemon's log, one line per event."""
        return self.root / "pilotif.log"

    @property
    def control_socket(self) -> Path:
        """The Unix socket the CLI talks to; only root and the daemon's user can open it."""
        return self.root / "pilotif.sock"

    @property
    def identity_key(self) -> Path:
        """The node's private key (registry mode), created on first `up`."""
        return self.root / "identity.key"

    @property
    def control_counter(self) -> Path:
        """Above every counter the node sealed a control message with (CounterLease)."""
        return self.root / "control.counter"

    def create(self) -> None:
        """Make the directory (mode 0700) if it does not exist. An existing one keeps
        its mode, but it is refused unless this user owns it, nobody else may write to
        it or to a directory in it, and it holds no symbolic link: another user could
        plant files and links where the daemon writes (and deletes). Each directory
        above it must belong to root or this user and be writable by nobody else (or be
        sticky, as /tmp): else it could be renamed away and replaced."""
        _check_ancestors(self.root)
        try:
            self.root.mkdir(mode=_STATE_DIR_MODE, parents=True)
            return
        except FileExistsError:
            pass
        info = self.root.stat()
        if not stat.S_ISDIR(info.st_mode):
            raise StateFileError(f"state dir {self.root} is not a directory")
        _check_own_directory(self.root, info, "state dir")
        for directory, subdirectories, files in os.walk(self.root):
            for name in (*subdirectories, *files):
                path = Path(directory) / name
                if path.is_symlink():
                    raise StateFileError(
                        f"state dir {self.root} holds a symbolic link, {path}: pilotif "
                        "follows none there; remove it"
                    )
            if directory != str(self.root):
                _check_own_directory(Path(directory), os.lstat(directory), "directory")


def _check_own_directory(path: Path, info: os.stat_result, what: str) -> None:
    """StateFileError unless this user owns the directory and nobody else may write to it."""
    if info.st_uid != os.geteuid():
        raise StateFileError(
            f"{what} {path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()}):"
            " its owner could plant links where pilotif writes; give pilotif a directory of"
            " its own"
        )
    if info.st_mode & _WRITABLE_BY_OTHERS:
        raise StateFileError(
            f"{what} {path} is writable by other users; give pilotif a directory of its"
            f" own, such as {path / 'pilotif'}"
        )


def _check_ancestors(root: Path) -> None:
    """StateFileError if a directory above `root` (as written, and as its links resolve)
    belongs to another user, or others may write to it without the sticky bit."""
    absolute = root.absolute()
    for ancestor in (*absolute.parents, *absolute.resolve().parents):
        try:
            info = ancestor.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            continue  # the directory it is in is checked, and where it leads
        sticky = bool(info.st_mode & stat.S_ISVTX)
        if info.st_uid not in (_ROOT_UID, os.geteuid()) or (
            info.st_mode & _WRITABLE_BY_OTHERS and not sticky
        ):
            raise StateFileError(
                f"{ancestor}, above the state dir {root}, may be changed by another user"
                f" (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}): they could"
                " swap the state dir; give pilotif a directory under one only root or this"
                " user may change"
            )
