"""Wire layouts of the WireGuard messages (types 1-4) and their parsers.

Every message starts with a little-endian 32-bit word: the type byte followed by
three reserved zero bytes, so a valid first word equals the type number. Indices
are little-endian 32-bit, the transport counter little-endian 64-bit. Parsers
take hostile input: they return a frozen dataclass or raise MessageError, never
anything else.
"""

import struct
from dataclasses import dataclass
from typing import Final

from pilotif.wg.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from pilotif.wg.crypto import BytesLike
from pilotif.wg.drops import DropReason

# type word, sender, ephemeral, AEAD(static), AEAD(timestamp), mac1, mac2
INITIATION: Final = struct.Struct("<II32s48s28s16s16s")
# type word, sender, receiver, ephemeral, AEAD(empty), mac1, mac2
RESPONSE: Final = struct.Struct("<III32s16s16s16s")
# type word, receiver, nonce, XAEAD(cookie)
COOKIE_REPLY: Final = struct.Struct("<II24s32s")
# type word, receiver, counter; the encrypted packet follows
TRANSPORT_HEADER: Final = struct.Struct("<IIQ")

assert INITIATION.size == INITIATION_SIZE
assert RESPONSE.size == RESPONSE_SIZE
assert COOKIE_REPLY.size == COOKIE_REPLY_SIZE
assert TRANSPORT_HEADER.size == TRANSPORT_HEADER_SIZE


class MessageError(ValueError):
    """A datagram that is not a well-formed message of the expected type."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InitiationMessage:
    """Type 1: the initiator's first handshake message."""

    sender: int
    unencrypted_ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class ResponseMessage:
    """Type 2: the responder's handshake message."""

    sender: int
    receiver: int
    unencrypted_ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class CookieReplyMessage:
    """Type 3: a responder under load hands the initiator a cookie for mac2."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


def _check_fixed(data: BytesLike, size: int, message_type: int, name: str) -> None:
    if len(data) != size:
        raise MessageError(DropReason.MALFORMED, f"{name} must be {size} bytes, not {len(data)}")
    _check_type(data, message_type, name)


def _check_type(data: BytesLike, message_type: int, name: str) -> None:
    if data[0] != message_type:
        raise MessageError(DropReason.MALFORMED, f"not a {name} (type {data[0]})")
    if data[1] or data[2] or data[3]:
        raise MessageError(DropReason.MALFORMED, f"{name} with non-zero reserved bytes")


def parse_initiation(data: BytesLike) -> InitiationMessage:
    """Split a handshake initiation into its fields."""
    _check_fixed(data, INITIATION_SIZE, MESSAGE_INITIATION, "handshake initiation")
    _, sender, ephemeral, static, timestamp, mac1, mac2 = INITIATION.unpack(data)
    return InitiationMessage(sender, ephemeral, static, timestamp, mac1, mac2)


def parse_response(data: BytesLike) -> ResponseMessage:
    """Split a handshake response into its fields."""
    _check_fixed(data, RESPONSE_SIZE, MESSAGE_RESPONSE, "handshake response")
    _, sender, receiver, ephemeral, empty, mac1, mac2 = RESPONSE.unpack(data)
    return ResponseMessage(sender, receiver, ephemeral, empty, mac1, mac2)


def parse_cookie_reply(
    data: BytesLike, message_type: int = MESSAGE_COOKIE_REPLY
) -> CookieReplyMessage:
    """Split a cookie reply into its fields (`message_type`: the registry sends its cookie
    replies as its own type, 0x54, to keep them apart from a peer's)."""
    _check_fixed(data, COOKIE_REPLY_SIZE, message_type, "cookie reply")
    _, receiver, nonce, encrypted_cookie = COOKIE_REPLY.unpack(data)
    return CookieReplyMessage(receiver, nonce, encrypted_cookie)


def parse_transport_header(data: BytesLike) -> tuple[int, int]:
    """(receiver index, counter) of a transport message; the ciphertext follows the header."""
    if len(data) < TRANSPORT_MIN_SIZE:
        raise MessageError(DropReason.MALFORMED, f"transport message of {len(data)} bytes")
    _check_type(data, MESSAGE_TRANSPORT, "transport message")
    _, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    return receiver, counter


def pack_transport_header(
    buf: bytearray | memoryview, offset: int, receiver: int, counter: int
) -> None:
    """Write the 16-byte transport header into a preallocated buffer at `offset`."""
    TRANSPORT_HEADER.pack_into(buf, offset, MESSAGE_TRANSPORT, receiver, counter)


@dataclass(frozen=True, slots=True)
class Coalesced:
    """One GRO receive: datagrams of `segment_size` bytes back to back in `buffer` (the
    last may be shorter; a `segment_size` of 0 means one datagram)."""

    buffer: memoryview
    segment_size: int


def split_coalesced(buffer: memoryview, segment_size: int) -> list[memoryview]:
    """The datagrams of a GRO receive: `segment_size` bytes each, the last maybe fewer
    (a `segment_size` of 0 means one datagram)."""
    if segment_size <= 0 or segment_size >= len(buffer):
        return [buffer]
    return [buffer[start : start + segment_size] for start in range(0, len(buffer), segment_size)]
