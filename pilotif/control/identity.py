"""A node's identity as the control plane sees it: its key file, the IPv6 address derived
from its key, and the rules for hostnames."""

import ipaddress
import re
from pathlib import Path

from pilotif.util.files import StateFileError, read_state_file, write_private_file
from pilotif.wg.crypto import generate_private_key, hash_
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

IPV6_PREFIX = ipaddress.IPv6Network("fd50:696c:6f74::/48")
_IPV6_LABEL = b"pilotif ipv6"
_IPV6_SUFFIX_BYTES = 10
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class HostnameError(ValueError):
    """A hostname that is not a DNS label."""


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
