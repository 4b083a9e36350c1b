"""Sealing a run of packets and opening a batch of transport messages at once: the
native loops (`pilotif.wg.fastpath._batch_loops`, built from C by `pip install` when a
compiler and OpenSSL's headers are there) or, without them, the same in Python through
`cryptography`, one packet at a time. Three are native only, the fast path of rules the
plain path keeps per packet: sealing a TCP super-packet as it is cut (`seal_tso`; else
the device cuts it with pilotif.packet.segments.cut_segments and seals the run) and
merging the next segments of each TCP connection in a decrypted batch into one TUN
write each (`coalesce` from the packets, `coalesce_rows` from the rows a batch of one
run was decrypted into; else every packet is written as it is). Tests hold each native
rule to the plain path: the same bytes on the wire, the same packets into the TUN.

`PILOTIF_PURE_PYTHON=1` in the environment makes every process use the Python loops
(scripts/test.sh runs the data plane's unit tests that way too).
"""

import os
import struct
from collections.abc import Callable, Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pilotif.wg.constants import AEAD_TAG_SIZE
from pilotif.wg.crypto import KEY_SIZE, BytesLike

PURE_PYTHON_ENV: Final = "PILOTIF_PURE_PYTHON"
_NONCE: Final = struct.Struct("<4xQ")
_TAG: Final = AEAD_TAG_SIZE

OpenRows = Callable[[bytes, int, BytesLike, int, int, int, int, memoryview], list[int]]
SealRows = Callable[
    [bytes, int, Sequence[BytesLike], Sequence[int], Sequence[int], int, memoryview], None
]

SealTso = Callable[
    [bytes, int, int, BytesLike, int, int, int, memoryview, bool], tuple[int, int, int]
]
Coalesce = Callable[[Sequence[BytesLike]], list[bytes]]
CoalesceRows = Callable[[BytesLike, int, int, int], bytes | None]


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


def _seal_rows_python(
    key: bytes,
    first_counter: int,
    packets: Sequence[BytesLike],
    padded_sizes: Sequence[int],
    offsets: Sequence[int],
    header_size: int,
    out: memoryview,
) -> None:
    """What the native seal_rows does (see its docstring), one call per packet."""
    if len(key) != KEY_SIZE:
        raise ValueError("the key is 32 bytes")
    if not len(packets) == len(padded_sizes) == len(offsets) or header_size < 0:
        raise ValueError("one size and one offset per packet")
    for padded, offset, packet in zip(padded_sizes, offsets, packets, strict=True):
        if padded < len(packet) or offset < 0 or offset + header_size + padded + _TAG > len(out):
            raise ValueError("a packet does not fit where it goes")
    encrypt = ChaCha20Poly1305(key).encrypt_into
    pack_nonce = _NONCE.pack
    rows = zip(packets, padded_sizes, offsets, strict=True)
    for row, (packet, padded, offset) in enumerate(rows):
        start = offset + header_size
        text = packet if len(packet) == padded else bytes(packet) + bytes(padded - len(packet))
        encrypt(pack_nonce(first_counter + row), text, None, out[start : start + padded + _TAG])


def _native() -> tuple[OpenRows, SealRows, SealTso, Coalesce, CoalesceRows] | None:
    if os.environ.get(PURE_PYTHON_ENV):
        return None
    try:
        from pilotif.wg.fastpath import _batch_loops  # type: ignore[attr-defined]
    except ImportError:
        return None
    native: tuple[OpenRows, SealRows, SealTso, Coalesce, CoalesceRows] = (
        _batch_loops.open_rows,
        _batch_loops.seal_rows,
        _batch_loops.seal_tso,
        _batch_loops.coalesce,
        _batch_loops.coalesce_rows,
    )
    return native


_LOOPS: Final = _native()
NATIVE: Final = _LOOPS is not None
"""Whether the native loops are in use."""
open_rows: Final[OpenRows] = _LOOPS[0] if _LOOPS else _open_rows_python
"""Decrypt `count` messages laid back to back in `buffer` (each `segment_size` bytes, the
last `last_size`): a `header_size`-byte header, the ciphertext and the tag; message i
has counter first_counter + i and its plaintext goes to plaintexts[i * stride:], stride
being segment_size - header_size - 16. Returns the rows whose tag did not verify."""
seal_rows: Final[SealRows] = _LOOPS[1] if _LOOPS else _seal_rows_python
"""For each packet i: copy it to out[offsets[i] + header_size:], zero-pad it to
padded_sizes[i] bytes, encrypt it there with counter first_counter + i and write the
16-byte tag after it (the headers are the caller's)."""
seal_tso: Final[SealTso | None] = _LOOPS[2] if _LOOPS else None
"""Cut a TCP (or, with `udp`, UDP) super-packet into segments and seal each as it is
cut, back to back in `out`: (key, first_counter, receiver_index, packet,
transport_start, segment_payload, mtu, out, udp) -> (count, datagram_size, total); see
the native docstring. None without the native loops."""
coalesce: Final[Coalesce | None] = _LOOPS[3] if _LOOPS else None
"""The TUN writes (each a virtio header, then a packet or a TCP super-packet) that carry
a batch of packets, each connection's run of next segments merged; see the native
docstring. None without the native loops."""
coalesce_rows: Final[CoalesceRows | None] = _LOOPS[4] if _LOOPS else None
"""The one super-packet write `coalesce` makes of the packets laid out one per `stride`
bytes of a buffer (buffer, stride, count, last_size), each as long as its IP header says,
when they are one run (else None): a decrypted batch merged without a view per packet.
None without the native loops."""
