"""Relay tickets: the registry's proof, for one standalone relay, that two nodes trust
each other until a given time.

A ticket names the peer of the node that presents it, when it expires (Unix seconds)
and a 16-byte MAC over both keys (in byte order, so either node's ticket proves the
pair) and the expiry. The MAC key is HASH(label || DH(registry, relay)): the registry
and that relay compute it from their own private key and the other's public key, so no
secret is handed out, a relay needs no database and no query per packet, and a ticket
made for one relay proves nothing at another.
"""

import base64
import binascii
import hmac
import struct
from typing import Final

from pilotif.control.wire import WireError
from pilotif.wg.crypto import KEY_SIZE, MAC_SIZE, dh, hash_, mac

TICKET_LIFETIME_S: Final = 600
"""How long a ticket proves a pair's trust: a revoked pair may use a relay this long
(WireGuard at the peer refuses its packets at once; the relay's check is against abuse,
not for secrecy)."""
TICKET_SIZE: Final = KEY_SIZE + 8 + MAC_SIZE
_EXPIRES: Final = struct.Struct(">Q")
_LABEL: Final = b"pilotif relay ticket v1"


def ticket_key(local_private: bytes, remote_public: bytes) -> bytes:
    """The MAC key shared by the registry and one relay (either side computes it)."""
    return hash_(_LABEL, dh(local_private, remote_public))


def _mac(key: bytes, holder: bytes, peer: bytes, expires: bytes) -> bytes:
    low, high = sorted((holder, peer))
    return mac(key, low + high + expires)


def issue_ticket(key: bytes, holder: bytes, peer: bytes, expires: int) -> str:
    """The ticket (base64) that `holder` presents to prove it may reach `peer`."""
    packed = _EXPIRES.pack(expires)
    return base64.b64encode(peer + packed + _mac(key, holder, peer, packed)).decode("ascii")


def check_ticket(key: bytes, holder: bytes, ticket: object, now: float) -> tuple[bytes, int]:
    """The peer a ticket presented by `holder` proves and when it expires; WireError
    (`bad_ticket`, `expired_ticket`) if it proves nothing."""
    peer, packed, tag = _unpack(ticket)
    if not hmac.compare_digest(tag, _mac(key, holder, peer, packed)):
        raise WireError("bad_ticket", "the MAC does not match")
    (expires,) = _EXPIRES.unpack(packed)
    if expires <= now:
        raise WireError("expired_ticket")
    return peer, expires


def ticket_claim(ticket: object) -> tuple[bytes, int] | None:
    """The peer a ticket names and when it says it expires (Unix seconds), its MAC
    unchecked (only the registry and the relay hold the key): what a node that kept
    tickets sorts them by. None if it is no ticket."""
    try:
        peer, packed, _ = _unpack(ticket)
    except WireError:
        return None
    return peer, int(_EXPIRES.unpack(packed)[0])


def _unpack(ticket: object) -> tuple[bytes, bytes, bytes]:
    """A ticket's peer, packed expiry and MAC; WireError (`bad_ticket`) if it is none."""
    if not isinstance(ticket, str):
        raise WireError("bad_ticket", "a ticket is a base64 string")
    try:
        raw = base64.b64decode(ticket, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("bad_ticket", "not base64") from None
    if len(raw) != TICKET_SIZE:
        raise WireError("bad_ticket", f"a ticket is {TICKET_SIZE} bytes")
    return raw[:KEY_SIZE], raw[KEY_SIZE:-MAC_SIZE], raw[-MAC_SIZE:]
