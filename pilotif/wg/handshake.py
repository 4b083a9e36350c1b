"""The Noise_IKpsk2 handshake of WireGuard (whitepaper 5.4.2 to 5.4.5), sans-IO.

Four pure functions: the initiator creates an initiation and later consumes the
response; the responder consumes the initiation and creates the response. Both
sides end with the same pair of transport keys in opposite directions. The
caller picks indices, ephemeral keys and timestamps, and fills mac1/mac2
(cookie.py); peer lookup, timestamp ordering and index matching stay with it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from cryptography.exceptions import InvalidTag

from pilotif.wg.constants import (
    INITIATION_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)
from pilotif.wg.crypto import (
    MAC_SIZE,
    BytesLike,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    public_key,
)
from pilotif.wg.drops import DropReason
from pilotif.wg.messages import (
    INITIATION,
    RESPONSE,
    InitiationMessage,
    MessageError,
    ResponseMessage,
    parse_initiation,
    parse_response,
)

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

_INITIAL_CHAINING_KEY: Final = hash_(CONSTRUCTION)
_INITIAL_HASH: Final = hash_(_INITIAL_CHAINING_KEY, IDENTIFIER)
# Each handshake AEAD key encrypts exactly one message, so its nonce is always 0.
_HANDSHAKE_NONCE: Final = 0
_EMPTY_MAC: Final = bytes(MAC_SIZE)

_Message = TypeVar("_Message")


@dataclass(frozen=True)
class LocalIdentity:
    """Our static key pair and the keys derived from our public key for the cookie MACs."""

    private_key: bytes
    public_key: bytes
    mac1_key: bytes
    """HASH("mac1----" || public_key): checks mac1 of messages sent to us."""
    cookie_key: bytes
    """HASH("cookie--" || public_key): encrypts the cookie replies we send."""

    @classmethod
    def from_private_key(cls, private_key: bytes) -> "LocalIdentity":
        """The identity of a 32-byte Curve25519 private key."""
        public = public_key(private_key)
        return cls(
            private_key=private_key,
            public_key=public,
            mac1_key=hash_(LABEL_MAC1, public),
            cookie_key=hash_(LABEL_COOKIE, public),
        )


class HandshakeError(ValueError):
    """A handshake message that does not decrypt, authenticate or parse."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class InitiatorState:
    """What the initiator keeps between sending its initiation and receiving the response."""

    sender_index: int
    remote_static: bytes
    chaining_key: bytes
    hash: bytes
    ephemeral_private: bytes


@dataclass(frozen=True)
class ResponderState:
    """What the responder learned from a valid initiation."""

    remote_static: bytes
    remote_index: int
    remote_ephemeral: bytes
    chaining_key: bytes
    hash: bytes
    timestamp: bytes
    """The initiator's 12-byte TAI64N timestamp: bigger bytes are newer."""


@dataclass(frozen=True)
class SessionKeys:
    """The transport keys of a completed handshake."""

    send_key: bytes
    receive_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool


def _dh(private_key: bytes, peer_public_key: bytes) -> bytes:
    try:
        return dh(private_key, peer_public_key)
    except ValueError as exc:
        raise HandshakeError(DropReason.HANDSHAKE_FAILED, "low-order public key") from exc


def _open(key: bytes, ciphertext: bytes, ad: bytes, what: str) -> bytes:
    try:
        return aead_decrypt(key, _HANDSHAKE_NONCE, ciphertext, ad)
    except InvalidTag as exc:
        raise HandshakeError(DropReason.HANDSHAKE_FAILED, f"{what} does not decrypt") from exc


def _parse(parse: Callable[[BytesLike], _Message], message: BytesLike) -> _Message:
    try:
        return parse(message)
    except MessageError as exc:
        raise HandshakeError(exc.reason, str(exc)) from exc


def create_initiation(
    local: LocalIdentity,
    remote_static: bytes,
    sender_index: int,
    timestamp: bytes,
    ephemeral_private: bytes,
) -> tuple[bytearray, InitiatorState]:
    """The 148-byte initiation (mac1 and mac2 zero) and the state to consume the response."""
    ephemeral = public_key(ephemeral_private)
    chaining_key = kdf1(_INITIAL_CHAINING_KEY, ephemeral)
    hash_value = hash_(hash_(_INITIAL_HASH, remote_static), ephemeral)
    chaining_key, key = kdf2(chaining_key, _dh(ephemeral_private, remote_static))
    encrypted_static = aead_encrypt(key, _HANDSHAKE_NONCE, local.public_key, hash_value)
    hash_value = hash_(hash_value, encrypted_static)
    chaining_key, key = kdf2(chaining_key, _dh(local.private_key, remote_static))
    encrypted_timestamp = aead_encrypt(key, _HANDSHAKE_NONCE, timestamp, hash_value)
    hash_value = hash_(hash_value, encrypted_timestamp)

    message = bytearray(INITIATION_SIZE)
    INITIATION.pack_into(
        message,
        0,
        MESSAGE_INITIATION,
        sender_index,
        ephemeral,
        encrypted_static,
        encrypted_timestamp,
        _EMPTY_MAC,
        _EMPTY_MAC,
    )
    state = InitiatorState(
        sender_index=sender_index,
        remote_static=remote_static,
        chaining_key=chaining_key,
        hash=hash_value,
        ephemeral_private=ephemeral_private,
    )
    return message, state


def consume_initiation(
    local: LocalIdentity, message: BytesLike | InitiationMessage
) -> ResponderState:
    """Decrypt the initiator's static key and timestamp; raises HandshakeError.

    Neither mac1 nor the timestamp's freshness is checked here.
    """
    if not isinstance(message, InitiationMessage):
        message = _parse(parse_initiation, message)
    ephemeral = message.unencrypted_ephemeral
    chaining_key = kdf1(_INITIAL_CHAINING_KEY, ephemeral)
    hash_value = hash_(hash_(_INITIAL_HASH, local.public_key), ephemeral)
    chaining_key, key = kdf2(chaining_key, _dh(local.private_key, ephemeral))
    remote_static = _open(key, message.encrypted_static, hash_value, "static key")
    hash_value = hash_(hash_value, message.encrypted_static)
    chaining_key, key = kdf2(chaining_key, _dh(local.private_key, remote_static))
    timestamp = _open(key, message.encrypted_timestamp, hash_value, "timestamp")
    hash_value = hash_(hash_value, message.encrypted_timestamp)
    return ResponderState(
        remote_static=remote_static,
        remote_index=message.sender,
        remote_ephemeral=ephemeral,
        chaining_key=chaining_key,
        hash=hash_value,
        timestamp=timestamp,
    )


def _mix_response(
    chaining_key: bytes,
    hash_value: bytes,
    ephemeral: bytes,
    ephemeral_dh: bytes,
    static_dh: bytes,
    preshared_key: bytes,
) -> tuple[bytes, bytes, bytes]:
    """The responder's e, ee, se, psk tokens: (chaining key, hash, key of the empty AEAD)."""
    chaining_key = kdf1(chaining_key, ephemeral)
    hash_value = hash_(hash_value, ephemeral)
    chaining_key = kdf1(chaining_key, ephemeral_dh)
    chaining_key = kdf1(chaining_key, static_dh)
    chaining_key, tau, key = kdf3(chaining_key, preshared_key)
    return chaining_key, hash_(hash_value, tau), key


def create_response(
    local: LocalIdentity,
    state: ResponderState,
    preshared_key: bytes,
    sender_index: int,
    ephemeral_private: bytes,
) -> tuple[bytearray, SessionKeys]:
    """The 92-byte response (mac1 and mac2 zero) and the responder's transport keys."""
    ephemeral = public_key(ephemeral_private)
    chaining_key, hash_value, key = _mix_response(
        state.chaining_key,
        state.hash,
        ephemeral,
        _dh(ephemeral_private, state.remote_ephemeral),
        _dh(ephemeral_private, state.remote_static),
        preshared_key,
    )
    encrypted_nothing = aead_encrypt(key, _HANDSHAKE_NONCE, b"", hash_value)
    message = bytearray(RESPONSE_SIZE)
    RESPONSE.pack_into(
        message,
        0,
        MESSAGE_RESPONSE,
        sender_index,
        state.remote_index,
        ephemeral,
        encrypted_nothing,
        _EMPTY_MAC,
        _EMPTY_MAC,
    )
    receive_key, send_key = kdf2(chaining_key, b"")
    keys = SessionKeys(
        send_key=send_key,
        receive_key=receive_key,
        local_index=sender_index,
        remote_index=state.remote_index,
        is_initiator=False,
    )
    return message, keys


def consume_response(
    local: LocalIdentity,
    state: InitiatorState,
    preshared_key: bytes,
    message: BytesLike | ResponseMessage,
) -> SessionKeys:
    """Authenticate the response to our initiation and derive the initiator's transport keys.

    Raises HandshakeError: MALFORMED for a bad layout, UNKNOWN_INDEX when the
    receiver index is not `state.sender_index`, HANDSHAKE_FAILED otherwise.
    """
    if not isinstance(message, ResponseMessage):
        message = _parse(parse_response, message)
    if message.receiver != state.sender_index:
        raise HandshakeError(DropReason.UNKNOWN_INDEX, "response to another initiation")
    ephemeral = message.unencrypted_ephemeral
    chaining_key, hash_value, key = _mix_response(
        state.chaining_key,
        state.hash,
        ephemeral,
        _dh(state.ephemeral_private, ephemeral),
        _dh(local.private_key, ephemeral),
        preshared_key,
    )
    _open(key, message.encrypted_nothing, hash_value, "response")
    send_key, receive_key = kdf2(chaining_key, b"")
    return SessionKeys(
        send_key=send_key,
        receive_key=receive_key,
        local_index=state.sender_index,
        remote_index=message.sender,
        is_initiator=True,
    )
