"""Text form of WireGuard keys: base64 of 32 bytes, as `wg` reads and writes them."""

import base64
import binascii

from pilotif.wg.crypto import KEY_SIZE


class InvalidKeyError(ValueError):
    """A key string that is not base64 of exactly 32 bytes."""


def encode_key(key: bytes) -> str:
    """The base64 text of a 32-byte key."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """The 32 bytes of a base64 key, or InvalidKeyError saying what is wrong with it."""
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyError("a key must be base64 (44 characters ending in '=')") from None
    if len(raw) != KEY_SIZE or len(stripped) != 44:
        raise InvalidKeyError(
            f"a key must be 32 bytes of base64 (44 characters), got {len(stripped)}"
        )
    return raw
