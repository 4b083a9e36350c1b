"""The state directory: created private, never chmodded when it exists, refused when
others may write in it; state files never followed through a symlink."""

import os
from pathlib import Path

import pytest

from pilotif.control.identity import load_or_create_key
from pilotif.util.files import StateFileError, append_private_file, write_private_file
from pilotif.util.paths import StatePaths


def test_a_new_state_dir_is_private(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "a" / "state")
    paths.create()
    assert paths.root.stat().st_mode & 0o777 == 0o700


def test_an_existing_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    StatePaths(root).create()
    assert root.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("mode", [0o1777, 0o770, 0o702])
def test_a_state_dir_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(StateFileError, match="writable by other users"):
        StatePaths(root).create()
    assert root.stat().st_mode & 0o7777 == mode


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateFileError, match="not a directory"):
        StatePaths(tmp_path / "file").create()


def test_the_log_is_appended_privately_and_never_through_a_link(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    with append_private_file(paths.log_file) as log:
        log.write(b"one\n")
    assert paths.log_file.stat().st_mode & 0o777 == 0o600
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    paths.log_file.unlink()
    paths.log_file.symlink_to(victim)
    with pytest.raises(StateFileError, match="symbolic link"):
        append_private_file(paths.log_file)
    assert victim.read_text() == "precious\n"


def test_the_pid_file_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    paths.pid_file.symlink_to(victim)
    write_private_file(paths.pid_file, f"{os.getpid()}\n")
    assert victim.read_text() == "precious\n"
    assert not paths.pid_file.is_symlink()


@pytest.mark.parametrize("text", ["", "garbage\n", "AAAA\n", "\xff"])
def test_a_corrupted_identity_key_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    key_file = StatePaths(tmp_path).identity_key
    key_file.write_bytes(text.encode("latin-1"))
    with pytest.raises(StateFileError, match=str(key_file)):
        load_or_create_key(key_file)


def test_an_identity_key_that_is_a_link_is_refused(tmp_path: Path) -> None:
    key_file = StatePaths(tmp_path).identity_key
    key_file.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateFileError, match="symbolic link"):
        load_or_create_key(key_file)
    assert not (tmp_path / "elsewhere").exists()


OTHER_UID = 65534
"""nobody: a local user who is not the one running pilotif (these tests run as root)."""
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _victim(tmp_path: Path) -> Path:
    """A directory of someone else's files that root must never delete."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me\n")
    return victim


@needs_root
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Issue 22: a state dir owned by another user passed the check; that user pointed
    received/.partial at any directory, and root deleted its files on start."""
    root = tmp_path / "theirs"
    (root / "received").mkdir(parents=True, mode=0o700)
    (root / "received" / ".partial").symlink_to(_victim(tmp_path))
    for path in (root, root / "received"):
        os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(0o700)
    with pytest.raises(StateFileError, match=f"belongs to uid {OTHER_UID}, not to this user"):
        StatePaths(root).create()
    assert (tmp_path / "victim" / "precious").read_text() == "keep me\n"


def test_a_symbolic_link_in_the_state_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "received").mkdir(parents=True, mode=0o700)
    (root / "received" / ".partial").symlink_to(_victim(tmp_path))
    with pytest.raises(StateFileError, match=r"holds a symbolic link, .*received/\.partial"):
        StatePaths(root).create()


@needs_root
def test_a_directory_in_the_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "received" / ".partial").mkdir(parents=True, mode=0o700)
    os.chown(root / "received", OTHER_UID, OTHER_UID)
    with pytest.raises(StateFileError, match=f"received belongs to uid {OTHER_UID}"):
        StatePaths(root).create()


@pytest.mark.parametrize(("mode", "refused"), [(0o777, True), (0o775, True), (0o1777, False)])
def test_a_directory_above_others_can_write_is_refused_unless_sticky(
    tmp_path: Path, mode: int, refused: bool
) -> None:
    """Another user who may write to the parent could rename the state dir and put theirs
    in its place; the sticky bit (as on /tmp) forbids that."""
    parent = tmp_path / "parent"
    parent.mkdir()
    parent.chmod(mode)
    if refused:
        with pytest.raises(StateFileError, match=f"above the state dir .* mode {mode:o}"):
            StatePaths(parent / "state").create()
        assert not (parent / "state").exists()
    else:
        StatePaths(parent / "state").create()


def test_a_state_dir_reached_through_a_link_of_ours_is_used(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    StatePaths(tmp_path / "link").create()
