"""The cryptographic primitives of WireGuard (whitepaper 5.4), on top of `cryptography`.

Keys travel as raw 32-byte strings; X25519 objects are built only where a
Diffie-Hellman needs one. `cryptography` has no XChaCha20, so HChaCha20 is
derived here from its ChaCha20 stream cipher (draft-irtf-cfrg-xchacha).
"""

import hashlib
import hmac as _hmac
import os
import struct
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20

from pilotif.packet.ip import BytesLike as BytesLike

KEY_SIZE = 32
HASH_SIZE: Final = 32
MAC_SIZE: Final = 16
XAEAD_NONCE_SIZE: Final = 24

_HCHACHA_INPUT_SIZE: Final = 16
_CHACHA_BLOCK_SIZE: Final = 64
_CHACHA_BLOCK_WORDS: Final = struct.Struct("<16I")
_WORD_MASK: Final = 0xFFFFFFFF
# "expand 32-byte k": ChaCha20 state words 0..3.
_CHACHA_CONSTANTS: Final = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
# AEAD nonce: 4 zero bytes, then the 64-bit little-endian counter.
_AEAD_NONCE: Final = struct.Struct("<4xQ")
_XAEAD_INNER_NONCE_PREFIX: Final = bytes(4)

# TAI64N: label 2**62 + 10 (TAI - UTC in 1972) + Unix seconds, then nanoseconds.
_TAI64_BASE: Final = 2**62 + 10
_TAI64N: Final = struct.Struct(">QI")
_NS_PER_S: Final = 1_000_000_000
# wireguard-go rounds the nanoseconds down to a multiple of 2**24 (about 16.8 ms)
# so that the timestamp does not reveal the clock precisely.
_TIMESTAMP_WHITENER_MASK: Final = ~(2**24 - 1)


def generate_private_key() -> bytes:
    """A new clamped Curve25519 private key, as `wg genkey` makes."""
    key = bytearray(os.urandom(KEY_SIZE))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


PrivateKey = bytes | X25519PrivateKey
"""A private key as its 32 bytes, or loaded once (what a party that agrees keys with many
others keeps: loading costs about as much as the agreement)."""


def loaded(private_key: PrivateKey) -> X25519PrivateKey:
    """The private key, loaded."""
    if isinstance(private_key, X25519PrivateKey):
        return private_key
    return X25519PrivateKey.from_private_bytes(private_key)


def public_key(private_key: PrivateKey) -> bytes:
    """The Curve25519 public key of a private key."""
    return loaded(private_key).public_key().public_bytes_raw()


def dh(private_key: PrivateKey, peer_public_key: bytes) -> bytes:
    """X25519; raises ValueError when the result is all zeros (a low-order point)."""
    return loaded(private_key).exchange(X25519PublicKey.from_public_bytes(peer_public_key))


def hash_(*parts: BytesLike) -> bytes:
    """HASH: BLAKE2s-256 of the concatenation of the parts."""
    digest = hashlib.blake2s()
    for part in parts:
        digest.update(part)
    return digest.digest()


def mac(key: BytesLike, data: BytesLike) -> bytes:
    """MAC: keyed BLAKE2s with a 16-byte digest."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac(key: BytesLike, data: BytesLike) -> bytes:
    """HMAC: HMAC-BLAKE2s-256 (RFC 2104 over BLAKE2s, 64-byte blocks)."""
    return _hmac.digest(bytes(key), data, hashlib.blake2s)


def kdf(key: BytesLike, data: BytesLike, count: int) -> tuple[bytes, ...]:
    """KDF_n: the first `count` (1 to 3) 32-byte outputs of HKDF over HMAC-BLAKE2s."""
    secret = hmac(key, data)
    outputs: list[bytes] = []
    previous = b""
    for index in range(1, count + 1):
        previous = hmac(secret, previous + bytes((index,)))
        outputs.append(previous)
    return tuple(outputs)


def kdf1(key: BytesLike, data: BytesLike) -> bytes:
    """KDF1: one derived key."""
    return kdf(key, data, 1)[0]


def kdf2(key: BytesLike, data: BytesLike) -> tuple[bytes, bytes]:
    """KDF2: two derived keys."""
    first, second = kdf(key, data, 2)
    return first, second


def kdf3(key: BytesLike, data: BytesLike) -> tuple[bytes, bytes, bytes]:
    """KDF3: three derived keys."""
    first, second, third = kdf(key, data, 3)
    return first, second, third


def aead_encrypt(key: BytesLike, counter: int, plaintext: BytesLike, ad: BytesLike) -> bytes:
    """AEAD: ChaCha20-Poly1305 with the counter as nonce; returns ciphertext + tag."""
    return ChaCha20Poly1305(key).encrypt(_AEAD_NONCE.pack(counter), plaintext, ad)


def aead_decrypt(key: BytesLike, counter: int, ciphertext: BytesLike, ad: BytesLike) -> bytes:
    """Inverse of aead_encrypt; raises cryptography.exceptions.InvalidTag."""
    return ChaCha20Poly1305(key).decrypt(_AEAD_NONCE.pack(counter), ciphertext, ad)


def hchacha20(key: BytesLike, nonce16: BytesLike) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha 2.2): a 32-byte subkey from a key and 16 bytes.

    A ChaCha20 block is rounds(state) + state, and a 16-byte `cryptography` nonce
    fills state words 12..15 exactly as the HChaCha20 input does; so subtracting
    the initial state from the first keystream block yields rounds(state), whose
    words 0..3 and 12..15 are the subkey.
    """
    if len(nonce16) != _HCHACHA_INPUT_SIZE:
        raise ValueError("HChaCha20 takes a 16-byte input")
    encryptor = Cipher(ChaCha20(bytes(key), bytes(nonce16)), mode=None).encryptor()
    block = _CHACHA_BLOCK_WORDS.unpack(encryptor.update(bytes(_CHACHA_BLOCK_SIZE)))
    key_words = struct.unpack("<8I", key)
    input_words = struct.unpack("<4I", nonce16)
    state = (*_CHACHA_CONSTANTS, *key_words, *input_words)
    rounds = [(block[i] - state[i]) & _WORD_MASK for i in range(len(state))]
    return struct.pack("<8I", *rounds[0:4], *rounds[12:16])


def _xaead(key: BytesLike, nonce24: BytesLike) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce24) != XAEAD_NONCE_SIZE:
        raise ValueError("XChaCha20-Poly1305 takes a 24-byte nonce")
    subkey = hchacha20(key, nonce24[:_HCHACHA_INPUT_SIZE])
    inner_nonce = _XAEAD_INNER_NONCE_PREFIX + bytes(nonce24[_HCHACHA_INPUT_SIZE:])
    return ChaCha20Poly1305(subkey), inner_nonce


def xaead_encrypt(key: BytesLike, nonce24: BytesLike, plaintext: BytesLike, ad: BytesLike) -> bytes:
    """XAEAD: XChaCha20-Poly1305 with a 24-byte nonce; returns ciphertext + tag."""
    cipher, nonce = _xaead(key, nonce24)
    return cipher.encrypt(nonce, plaintext, ad)


def xaead_decrypt(
    key: BytesLike, nonce24: BytesLike, ciphertext: BytesLike, ad: BytesLike
) -> bytes:
    """Inverse of xaead_encrypt; raises cryptography.exceptions.InvalidTag."""
    cipher, nonce = _xaead(key, nonce24)
    return cipher.decrypt(nonce, ciphertext, ad)


def tai64n(wall_time_s: float) -> bytes:
    """The 12-byte TAI64N timestamp of a Unix wall time, nanoseconds whitened."""
    seconds = int(wall_time_s // 1)
    nanoseconds = int((wall_time_s - seconds) * _NS_PER_S) & _TIMESTAMP_WHITENER_MASK
    return _TAI64N.pack(_TAI64_BASE + seconds, nanoseconds)
