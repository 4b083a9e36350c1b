"""Opening a batch of transport messages at once: the native loop
(`pilotif.overlay._batch_aead`, built from C by `pip install` when a compiler and
OpenSSL's headers are there) or, without it, the same in Python through `cryptography`.

`PILOTIF_PURE_PYTHON=1` in the environment makes every process use the Python loop (CI
runs the unit tests both ways).
"""

import os
import struct
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pilotif.overlay.constants import AEAD_TAG_SIZE
from pilotif.overlay.crypto import KEY_SIZE, BytesLike

PURE_PYTHON_ENV: Final = "PILOTIF_PURE_PYTHON"
_NONCE: Final = struct.Struct("<4xQ")

OpenRows = Callable[[bytes, int, BytesLike, int, int, int, int, memoryview], list[int]]


def _open_rows_python(
    key: bytes,
    first_counter: int,
    buffer: BytesLike,
    segment_size: int,
    count: int,
    last_size: int,
    header_size: int,
    plaintexts: memoryview,
) -> list[int]:
    """What the native open_rows does (see its docstring), one call per message."""
    if len(key) != KEY_SIZE:
        raise ValueError("the key is 32 bytes")
    view = memoryview(buffer)
    stride = segment_size - header_size - AEAD_TAG_SIZE
    if (
        count < 1
        or header_size < 0
        or stride < 0
        or not header_size + AEAD_TAG_SIZE <= last_size <= segment_size
        or len(view) != (count - 1) * segment_size + last_size
        or len(plaintexts) < (count - 1) * stride + last_size - header_size - AEAD_TAG_SIZE
    ):
        raise ValueError("the buffers do not hold `count` messages")
    decrypt = ChaCha20Poly1305(key).decrypt_into
    pack_nonce = _NONCE.pack
    failed: list[int] = []
    for row in range(count):
        start = row * segment_size
        size = segment_size if row < count - 1 else last_size
        plain = size - header_size - AEAD_TAG_SIZE
        try:
            decrypt(
                pack_nonce(first_counter + row),
                view[start + header_size : start + size],
                None,
                plaintexts[row * stride : row * stride + plain],
            )
        except InvalidTag:
            failed.append(row)
    return failed


def _native() -> OpenRows | None:
    if os.environ.get(PURE_PYTHON_ENV):
        return None
    try:
        from pilotif.overlay import _batch_aead  # type: ignore[attr-defined]
    except ImportError:
        return None
    native: OpenRows = _batch_aead.open_rows
    return native


NATIVE: Final = _native() is not None
"""Whether the native loop is in use."""
open_rows: Final[OpenRows] = _native() or _open_rows_python
"""Decrypt `count` messages laid back to back in `buffer` (each `segment_size` bytes, the
last `last_size`): a `header_size`-byte header, the ciphertext and the tag; message i
has counter first_counter + i and its plaintext goes to plaintexts[i * stride:], stride
being segment_size - header_size - 16. Returns the rows whose tag did not verify."""
