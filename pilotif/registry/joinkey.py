"""Join keys: what an operator hands out so that a node may join a closed registry, a
network, and hold tags that mean something.

A key reads `pjk_<id>_<secret>`: the id (8 hex digits) names it in listings and in
`key revoke`; the registry stores only a BLAKE2s digest of the secret, so its database
does not hold usable keys. `parse_join_key` never raises: text that is not a key is
None, and the registry answers it as an unknown key.
"""

import hashlib
import hmac
import secrets
from typing import Final

PREFIX: Final = "pjk_"
_ID_HEX_CHARS: Final = 8
_SECRET_BYTES: Final = 24
_MAX_SECRET_CHARS: Final = 64
_PERSON: Final = b"pjk-v1"


def new_join_key() -> tuple[str, str, bytes]:
    """A fresh key: (id, the key's text, the digest to store)."""
    key_id = secrets.token_hex(_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return key_id, f"{PREFIX}{key_id}_{secret}", secret_digest(secret)


def parse_join_key(text: str) -> tuple[str, str] | None:
    """(id, secret) of a key's text, or None when it is not one."""
    text = text.strip()
    if not text.startswith(PREFIX):
        return None
    key_id, separator, secret = text[len(PREFIX) :].partition("_")
    if (
        separator != "_"
        or len(key_id) != _ID_HEX_CHARS
        or any(c not in "0123456789abcdef" for c in key_id)
        or not 0 < len(secret) <= _MAX_SECRET_CHARS
    ):
        return None
    return key_id, secret


def secret_digest(secret: str) -> bytes:
    """What the registry stores of a key's secret."""
    return hashlib.blake2s(secret.encode(), person=_PERSON).digest()


def secret_matches(secret: str, digest: bytes) -> bool:
    """Whether `secret` is the one stored as `digest` (in constant time)."""
    return hmac.compare_digest(secret_digest(secret), digest)
