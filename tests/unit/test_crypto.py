"""Known answers for the WireGuard primitives: BLAKE2s, HMAC, KDF, AEADs, TAI64N."""

import hashlib

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pilotif.wg import crypto

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
XCHACHA_KEY = bytes(range(0x80, 0xA0))
XCHACHA_NONCE = bytes(range(0x40, 0x58))
XCHACHA_AD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
# draft-irtf-cfrg-xchacha-03, appendix A.3.1: ciphertext then tag.
XCHACHA_SEALED = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"
)


def _reference_hmac(key: bytes, data: bytes) -> bytes:
    """RFC 2104 spelled out over BLAKE2s-256 (64-byte blocks)."""
    block = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in block) + data).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in block) + inner).digest()


def test_hash_is_blake2s_256_of_the_concatenation() -> None:
    # RFC 7693 appendix B: BLAKE2s-256("abc").
    expected = "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    assert crypto.hash_(b"abc").hex() == expected
    assert crypto.hash_(b"a", bytearray(b"b"), memoryview(b"c")).hex() == expected


def test_mac_is_keyed_blake2s_128() -> None:
    key = bytes(range(32))
    assert (
        crypto.mac(key, b"message") == hashlib.blake2s(b"message", key=key, digest_size=16).digest()
    )
    assert len(crypto.mac(key, b"")) == 16


def test_hmac_is_rfc2104_over_blake2s() -> None:
    key = bytes(range(32))
    assert crypto.hmac(key, b"data") == _reference_hmac(key, b"data")
    assert crypto.hmac(memoryview(key), b"") == _reference_hmac(key, b"")


def test_kdf_follows_the_whitepaper_chain() -> None:
    key, data = bytes(range(32)), b"input key material"
    secret = _reference_hmac(key, data)
    t1 = _reference_hmac(secret, b"\x01")
    t2 = _reference_hmac(secret, t1 + b"\x02")
    t3 = _reference_hmac(secret, t2 + b"\x03")
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_aead_nonce_is_four_zero_bytes_and_the_little_endian_counter() -> None:
    key = bytes(range(32))
    counter = 0x0102030405060708
    nonce = bytes(4) + counter.to_bytes(8, "little")
    expected = ChaCha20Poly1305(key).encrypt(nonce, b"payload", b"ad")
    assert crypto.aead_encrypt(key, counter, b"payload", b"ad") == expected
    assert crypto.aead_decrypt(key, counter, expected, b"ad") == b"payload"


@pytest.mark.parametrize("counter, ad", [(1, b""), (0, b"other ad")])
def test_aead_decrypt_refuses_the_wrong_counter_or_ad(counter: int, ad: bytes) -> None:
    key = bytes(32)
    sealed = crypto.aead_encrypt(key, 0, b"payload", b"")
    with pytest.raises(InvalidTag):
        crypto.aead_decrypt(key, counter, sealed, ad)


def test_hchacha20_matches_the_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1.
    subkey = crypto.hchacha20(bytes(range(32)), bytes.fromhex("000000090000004a0000000031415927"))
    assert subkey.hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"


def test_xchacha20_poly1305_matches_the_draft_vector() -> None:
    sealed = crypto.xaead_encrypt(XCHACHA_KEY, XCHACHA_NONCE, SUNSCREEN, XCHACHA_AD)
    assert sealed == XCHACHA_SEALED
    assert crypto.xaead_decrypt(XCHACHA_KEY, XCHACHA_NONCE, XCHACHA_SEALED, XCHACHA_AD) == SUNSCREEN


@pytest.mark.parametrize("position", [0, 50, len(XCHACHA_SEALED) - 1])
def test_xchacha20_poly1305_refuses_a_flipped_byte(position: int) -> None:
    tampered = bytearray(XCHACHA_SEALED)
    tampered[position] ^= 0x01
    with pytest.raises(InvalidTag):
        crypto.xaead_decrypt(XCHACHA_KEY, XCHACHA_NONCE, tampered, XCHACHA_AD)


def test_xchacha20_poly1305_wants_a_24_byte_nonce() -> None:
    with pytest.raises(ValueError, match="24-byte"):
        crypto.xaead_encrypt(XCHACHA_KEY, bytes(12), b"", b"")


def test_tai64n_layout_of_the_unix_epoch() -> None:
    assert crypto.tai64n(0.0).hex() == "400000000000000a" + "00000000"


def test_tai64n_rounds_nanoseconds_down_to_multiples_of_2_pow_24() -> None:
    stamp = crypto.tai64n(1_700_000_000.5)
    assert len(stamp) == 12
    assert int.from_bytes(stamp[:8], "big") == 2**62 + 10 + 1_700_000_000
    assert int.from_bytes(stamp[8:], "big") == 500_000_000 // 2**24 * 2**24
    assert crypto.tai64n(1_700_000_000.500_001) == stamp


def test_tai64n_later_times_compare_greater() -> None:
    assert crypto.tai64n(1_700_000_000.0) < crypto.tai64n(1_700_000_000.1)
    assert crypto.tai64n(1_700_000_000.9) < crypto.tai64n(1_700_000_001.0)


def test_generated_keys_agree_on_a_shared_secret() -> None:
    alice, bob = crypto.generate_private_key(), crypto.generate_private_key()
    assert crypto.dh(alice, crypto.public_key(bob)) == crypto.dh(bob, crypto.public_key(alice))


def test_dh_refuses_a_low_order_point() -> None:
    with pytest.raises(ValueError):
        crypto.dh(crypto.generate_private_key(), bytes(32))
