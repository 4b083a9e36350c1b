"""Run a command as an unprivileged user (uid 65534, nobody, no groups, no capabilities)
even when this Python lives under a directory only root may enter (/root/.pyenv): the
command runs in a mount namespace of its own where that directory is a tmpfs that lets
anyone through, with the one path inside it that Python needs bound back."""

import os
import sys
from pathlib import Path
from typing import Final

NOBODY_UID: Final = 65534
_SCRIPT: Final = """
set -e
hold=$(mktemp -d)
mount --bind "$1" "$hold"
mount -t tmpfs -o mode=0755 pflab "$1"
mkdir -p "$1/$2"
mount --bind "$hold/$2" "$1/$2"
umount "$hold"
rmdir "$hold"
shift 2
exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all -- "$@"
"""


def _closed_ancestor(path: Path) -> tuple[Path, str] | None:
    """The highest directory above `path` that others may not enter, and the name of its
    entry on the way to `path`; None when every one lets anyone through."""
    parts = path.parts
    for depth in range(1, len(parts) - 1):
        directory = Path(*parts[: depth + 1])
        if not os.stat(directory).st_mode & 0o001:
            return directory, parts[depth + 1]
    return None


def as_nobody(*command: str, uid: int = NOBODY_UID) -> list[str]:
    """`command` as uid `uid` with no groups and no capabilities (run it as root)."""
    closed = _closed_ancestor(Path(sys.executable).resolve())
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if closed is None:
        return [*setpriv, "--inh-caps=-all", "--", *command]
    script = _SCRIPT.replace("{uid}", str(uid))
    directory, entry = closed
    return [
        *("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"),
        *(str(directory), entry, *command),
    ]
