"""Identities and state files: key files kept atomically with mode 0600 and never read
through a symlink, the IPv6 address derived from a key, and the rules for hostnames."""

import errno
import ipaddress
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from pilotif.wg.crypto import generate_private_key, hash_
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

IPV6_PREFIX = ipaddress.IPv6Network("fd50:696c:6f74::/48")
_IPV6_LABEL = b"pilotif ipv6"
_IPV6_SUFFIX_BYTES = 10
_KEY_FILE_MODE = 0o600
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class HostnameError(ValueError):
    """A hostname that is not a DNS label."""


class StateFileError(Exception):
    """A state file that cannot be used; the message names it and says what to do."""


def ipv6_for_key(public_key: bytes) -> ipaddress.IPv6Address:
    """The node's IPv6 address: the pilotif ULA /48 and 80 bits of a hash of its key."""
    suffix = hash_(_IPV6_LABEL, public_key)[:_IPV6_SUFFIX_BYTES]
    return ipaddress.IPv6Address(IPV6_PREFIX.network_address.packed[:6] + suffix)


def normalize_hostname(name: str) -> str:
    """The lower-cased hostname, or HostnameError saying what a valid one looks like."""
    lowered = name.strip().lower()
    if not _HOSTNAME.match(lowered):
        raise HostnameError(
            f"invalid hostname {name!r}: use 1-63 letters, digits and '-', "
            "not starting or ending with '-'"
        )
    return lowered


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename), readable by the owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, _KEY_FILE_MODE)
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
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, _KEY_FILE_MODE)
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


def load_or_create_key(path: Path) -> bytes:
    """The private key stored at `path`, created there on first use."""
    key = load_key(path)
    if key is None:
        key = generate_private_key()
        write_private_file(path, encode_key(key) + "\n")
    return key


def load_key(path: Path) -> bytes | None:
    """The private key stored at `path` (None: no file); StateFileError if the file
    holds something else."""
    text = read_state_file(path)
    if text is None:
        return None
    try:
        return decode_key(text)
    except InvalidKeyError:
        raise StateFileError(
            f"{path} does not hold a private key; restore it from a backup, or move it "
            "away to start with a new key (peers must then trust the new key again)"
        ) from None
