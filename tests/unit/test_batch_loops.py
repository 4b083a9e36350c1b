"""The batch opener: the native loop and the Python one give the same plaintexts and
the same refusals, for whole batches, a short last message, keepalives and forgeries."""

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pilotif.wg.fastpath import batch_loops
from pilotif.wg.fastpath.batch_loops import (
    PURE_PYTHON_ENV,
    _open_rows_python,
    _seal_rows_python,
    open_rows,
    seal_rows,
)

HEADER = 16
TAG = 16
NONCE = struct.Struct("<4xQ")
IMPLEMENTATIONS = [pytest.param(_open_rows_python, id="python")]
SEALERS = [pytest.param(_seal_rows_python, id="python")]
if batch_loops.NATIVE:
    IMPLEMENTATIONS.append(pytest.param(open_rows, id="native"))
    SEALERS.append(pytest.param(seal_rows, id="native"))


def _batch(key: bytes, first: int, plains: list[bytes]) -> bytes:
    aead = ChaCha20Poly1305(key)
    return b"".join(
        bytes(range(HEADER)) + aead.encrypt(NONCE.pack(first + i), plain, None)
        for i, plain in enumerate(plains)
    )


def test_the_native_loop_is_built_unless_python_is_asked_for() -> None:
    """CI installs a compiler and OpenSSL's headers: a missing build must not pass
    unnoticed as the Python loop."""
    assert batch_loops.NATIVE is not bool(os.environ.get(PURE_PYTHON_ENV))


@pytest.mark.parametrize("opener", IMPLEMENTATIONS)
def test_a_batch_opens_row_by_row_with_a_shorter_last(opener: batch_loops.OpenRows) -> None:
    key = os.urandom(32)
    plains = [os.urandom(1424) for _ in range(44)] + [os.urandom(700)]
    buffer = _batch(key, 2**40, plains)
    out = bytearray(45 * 1424)
    segment = HEADER + 1424 + TAG
    failed = opener(key, 2**40, buffer, segment, 45, HEADER + 700 + TAG, HEADER, memoryview(out))
    assert failed == []
    assert bytes(out[: 44 * 1424]) == b"".join(plains[:44])
    assert bytes(out[44 * 1424 : 44 * 1424 + 700]) == plains[44]


@pytest.mark.parametrize("opener", IMPLEMENTATIONS)
def test_forged_and_misplaced_rows_are_named_and_the_rest_opened(
    opener: batch_loops.OpenRows,
) -> None:
    key = os.urandom(32)
    plains = [os.urandom(100) for _ in range(6)]
    buffer = bytearray(_batch(key, 7, plains))
    segment = HEADER + 100 + TAG
    buffer[1 * segment + HEADER + 5] ^= 1  # a flipped ciphertext bit
    buffer[3 * segment + segment - 1] ^= 0x80  # a flipped tag bit
    # Row 5 sealed under another counter: a replayed message in the wrong place.
    buffer[5 * segment :] = _batch(key, 99, [plains[5]])
    out = bytearray(6 * 100)
    failed = opener(key, 7, bytes(buffer), segment, 6, segment, HEADER, memoryview(out))
    assert failed == [1, 3, 5]
    for row in (0, 2, 4):
        assert bytes(out[row * 100 : row * 100 + 100]) == plains[row]


@pytest.mark.parametrize("opener", IMPLEMENTATIONS)
def test_keepalives_open_to_nothing_and_a_wrong_key_opens_nothing(
    opener: batch_loops.OpenRows,
) -> None:
    key = os.urandom(32)
    buffer = _batch(key, 0, [b"", b""])
    nothing = memoryview(bytearray())
    keepalive = HEADER + TAG
    assert opener(key, 0, buffer, keepalive, 2, keepalive, HEADER, nothing) == []
    other = os.urandom(32)
    assert opener(other, 0, buffer, keepalive, 2, keepalive, HEADER, nothing) == [0, 1]


@pytest.mark.parametrize("opener", IMPLEMENTATIONS)
def test_buffers_that_do_not_hold_the_batch_are_refused(opener: batch_loops.OpenRows) -> None:
    key = os.urandom(32)
    buffer = _batch(key, 0, [bytes(64)] * 3)
    segment = HEADER + 64 + TAG
    out = memoryview(bytearray(3 * 64))
    with pytest.raises(ValueError, match="32 bytes"):
        opener(key[:16], 0, buffer, segment, 3, segment, HEADER, out)
    for count, last in ((4, segment), (3, segment + 1), (0, segment), (3, TAG)):
        with pytest.raises(ValueError, match="do not hold"):
            opener(key, 0, buffer, segment, count, last, HEADER, out)
    with pytest.raises(ValueError, match="do not hold"):
        opener(key, 0, buffer, segment, 3, segment, HEADER, out[:100])


@pytest.mark.parametrize("sealer", SEALERS)
def test_a_run_is_sealed_padded_where_each_message_goes(sealer: batch_loops.SealRows) -> None:
    key = os.urandom(32)
    packets = [os.urandom(1420), os.urandom(37), b"", memoryview(os.urandom(100))[10:90]]
    padded = [1424, 48, 0, 80]
    starts, offset = [], 0
    for size in padded:
        starts.append(offset)
        offset += HEADER + size + TAG
    out = bytearray(b"\xee" * offset)
    sealer(key, 2**33, packets, padded, starts, HEADER, memoryview(out))
    aead = ChaCha20Poly1305(key)
    for row, (packet, size, start) in enumerate(zip(packets, padded, starts, strict=True)):
        assert out[start : start + HEADER] == b"\xee" * HEADER, "the header is the caller's"
        message = bytes(out[start + HEADER : start + HEADER + size + TAG])
        opened = aead.decrypt(NONCE.pack(2**33 + row), message, None)
        assert opened == bytes(packet) + bytes(size - len(packet))


@pytest.mark.parametrize("sealer", SEALERS)
def test_what_is_sealed_opens_in_a_batch(sealer: batch_loops.SealRows) -> None:
    key = os.urandom(32)
    packets = [os.urandom(64) for _ in range(5)]
    segment = HEADER + 64 + TAG
    out = bytearray(5 * segment)
    sealer(key, 9, packets, [64] * 5, [i * segment for i in range(5)], HEADER, memoryview(out))
    plain = bytearray(5 * 64)
    assert open_rows(key, 9, bytes(out), segment, 5, segment, HEADER, memoryview(plain)) == []
    assert bytes(plain) == b"".join(packets)


@pytest.mark.parametrize("sealer", SEALERS)
def test_a_run_that_does_not_fit_is_refused(sealer: batch_loops.SealRows) -> None:
    key = os.urandom(32)
    out = memoryview(bytearray(100))
    with pytest.raises(ValueError, match="32 bytes"):
        sealer(key[:31], 0, [b"x"], [16], [0], HEADER, out)
    with pytest.raises(ValueError, match="one size and one offset"):
        sealer(key, 0, [b"x", b"y"], [16], [0], HEADER, out)
    for size, start in ((0, 0), (16, 69), (16, -1), (100, 0)):
        with pytest.raises(ValueError, match="does not fit"):
            sealer(key, 0, [b"x"], [size], [start], HEADER, out)
