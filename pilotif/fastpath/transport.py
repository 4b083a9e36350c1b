"""Seal many IP packets as WireGuard transport messages laid back to back in one buffer.

What `Device._send_transport` does for one packet, done for a batch with one keypair:
no allocation per packet (the header is packed and the ciphertext encrypted in place
with `encrypt_into`), and the datagrams come out contiguous, ready for one UDP GSO send.
The caller owns the keypair's counter: the batch takes `len(packets)` nonces starting
at `first_counter`.
"""

import struct
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pilotif.overlay.constants import (
    AEAD_TAG_SIZE,
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    TRANSPORT_HEADER_SIZE,
)
from pilotif.overlay.crypto import BytesLike
from pilotif.overlay.messages import TRANSPORT_HEADER

_NONCE: Final = struct.Struct("<4xQ")
_OVERHEAD_BYTES: Final = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
_PADDING: Final = bytes(PADDING_MULTIPLE)


def padded_length(length: int, mtu: int) -> int:
    """A plaintext's length after WireGuard's padding: up to a multiple of 16, not past
    the MTU (a longer packet is not padded)."""
    padded = length + (-length % PADDING_MULTIPLE)
    return padded if padded <= mtu else max(length, mtu)


def seal_batch(
    aead: ChaCha20Poly1305,
    receiver_index: int,
    first_counter: int,
    packets: Sequence[BytesLike],
    mtu: int,
    out: bytearray,
    scratch: bytearray,
) -> list[memoryview]:
    """Encrypt `packets` into transport messages written back to back into `out`.

    Returns a view of each datagram. `out` must hold every packet padded plus 32 bytes
    of overhead; `scratch` (at least MTU bytes) holds a plaintext while it is padded.
    """
    view = memoryview(out)
    plain = memoryview(scratch)
    datagrams: list[memoryview] = []
    offset = 0
    counter = first_counter
    for packet in packets:
        length = len(packet)
        padded = padded_length(length, mtu)
        end = offset + padded + _OVERHEAD_BYTES
        TRANSPORT_HEADER.pack_into(out, offset, MESSAGE_TRANSPORT, receiver_index, counter)
        if padded == length:
            data: BytesLike = packet
        else:
            plain[:length] = packet
            plain[length:padded] = _PADDING[: padded - length]
            data = plain[:padded]
        aead.encrypt_into(
            _NONCE.pack(counter), data, None, view[offset + TRANSPORT_HEADER_SIZE : end]
        )
        datagrams.append(view[offset:end])
        offset = end
        counter += 1
    return datagrams


def open_into(aead: ChaCha20Poly1305, counter: int, datagram: BytesLike, out: memoryview) -> int:
    """Decrypt a transport message's payload into `out`: the plaintext's length, or -1
    when it does not authenticate. `out` must hold len(datagram) - 32 bytes."""
    length = len(datagram) - _OVERHEAD_BYTES
    try:
        aead.decrypt_into(
            _NONCE.pack(counter),
            memoryview(datagram)[TRANSPORT_HEADER_SIZE:],
            None,
            out[:length],
        )
    except InvalidTag:
        return -1
    return length
