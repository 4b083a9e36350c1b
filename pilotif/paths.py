"""Where a daemon keeps its files: everything lives under one state directory.

Two daemons with different state directories never share a file, so several can
run on one machine (one per network namespace).
"""

import stat
from dataclasses import dataclass
from pathlib import Path

from pilotif.identity import StateFileError

DEFAULT_STATE_DIR = Path("/var/lib/pilotif")
STATE_DIR_ENV = "PILOTIF_STATE_DIR"
_STATE_DIR_MODE = 0o700
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


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
        """The Unix socket the CLI talks to; only root can open it."""
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
        its mode, but one that other users may write to is refused: they could plant
        files and links where the daemon writes."""
        try:
            self.root.mkdir(mode=_STATE_DIR_MODE, parents=True)
            return
        except FileExistsError:
            pass
        mode = self.root.stat().st_mode
        if not stat.S_ISDIR(mode):
            raise StateFileError(f"state dir {self.root} is not a directory")
        if mode & _WRITABLE_BY_OTHERS:
            raise StateFileError(
                f"state dir {self.root} is writable by other users; give pilotif a "
                f"directory of its own, such as {self.root / 'pilotif'}"
            )
