"""The cryptographic primitives of WireGuard (whitepaper 5.4), on top of `cryptography`.

Keys travel as raw 32-byte strings; X25519 objects are built only where a
Diffie-Hellman needs one.
"""

import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

KEY_SIZE = 32


def generate_private_key() -> bytes:
    """A new clamped Curve25519 private key, as `wg genkey` makes."""
    key = bytearray(os.urandom(KEY_SIZE))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(private_key: bytes) -> bytes:
    """The Curve25519 public key of a private key."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def dh(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519; raises ValueError when the result is all zeros (a low-order point)."""
    private = X25519PrivateKey.from_private_bytes(private_key)
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
