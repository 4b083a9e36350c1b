"""The Noise_IKpsk2 handshake: known answers, round trips, and refusal of anything tampered."""

import pytest

from pilotif.wg import crypto
from pilotif.wg.drops import DropReason
from pilotif.wg.handshake import (
    HandshakeError,
    InitiatorState,
    LocalIdentity,
    ResponderState,
    SessionKeys,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from pilotif.wg.messages import parse_initiation, parse_response

NO_PSK = bytes(32)
PSK = bytes([5]) * 32
TIMESTAMP = bytes.fromhex("400000006553f1000d000000")
INITIATOR_INDEX = 0x11223344
RESPONDER_INDEX = 0x55667788

# Produced by an independent Noise implementation (the `noiseprotocol` package,
# Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with prologue "WireGuard v1 zx2c4
# Jason@zx2c4.com") from the clamped keys below, PSK and TIMESTAMP: the Noise
# payloads of the initiation (ephemeral, static, timestamp) and of the response
# (ephemeral, empty), and the first transport message in each direction.
KAT_INITIATION_NOISE = bytes.fromhex(
    "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22"
    "0a26599fb2188bb723276fc173af67616c817fc32fd04d686d87ec152fac10ee"
    "d2bda3bb3b6f1eded6977684082284d817fb46b3a99b6be9b0273ed6a914bf93"
    "9477a5a8d954ff8911e1780d"
)
KAT_RESPONSE_NOISE = bytes.fromhex(
    "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b"
    "d35d27cba9c19d020fdb02ac71f39ed5"
)
KAT_PING_INITIATOR_TO_RESPONDER = bytes.fromhex("ffc3f8c31e91c50679d482f5161776f5577c4d2f")
KAT_PONG_RESPONDER_TO_INITIATOR = bytes.fromhex("52f40caa57a2eee88322089cfc26431bc2060714")


def _clamped(fill: int) -> bytes:
    key = bytearray([fill]) * 32
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


@pytest.fixture
def initiator() -> LocalIdentity:
    return LocalIdentity.from_private_key(crypto.generate_private_key())


@pytest.fixture
def responder() -> LocalIdentity:
    return LocalIdentity.from_private_key(crypto.generate_private_key())


def _initiate(
    initiator: LocalIdentity, responder: LocalIdentity
) -> tuple[bytearray, InitiatorState]:
    return create_initiation(
        initiator,
        responder.public_key,
        INITIATOR_INDEX,
        TIMESTAMP,
        crypto.generate_private_key(),
    )


def _respond(
    responder: LocalIdentity, state: ResponderState, psk: bytes
) -> tuple[bytearray, SessionKeys]:
    return create_response(responder, state, psk, RESPONDER_INDEX, crypto.generate_private_key())


def test_identity_derives_the_cookie_keys_from_the_public_key() -> None:
    identity = LocalIdentity.from_private_key(_clamped(1))
    assert identity.public_key == crypto.public_key(_clamped(1))
    assert identity.mac1_key == crypto.hash_(b"mac1----", identity.public_key)
    assert identity.cookie_key == crypto.hash_(b"cookie--", identity.public_key)


def test_handshake_matches_an_independent_noise_implementation() -> None:
    initiator = LocalIdentity.from_private_key(_clamped(1))
    responder = LocalIdentity.from_private_key(_clamped(2))
    initiation, initiator_state = create_initiation(
        initiator, responder.public_key, INITIATOR_INDEX, TIMESTAMP, _clamped(3)
    )
    assert initiation[8:116] == KAT_INITIATION_NOISE
    responder_state = consume_initiation(responder, initiation)
    response, responder_keys = create_response(
        responder, responder_state, PSK, RESPONDER_INDEX, _clamped(4)
    )
    assert response[12:60] == KAT_RESPONSE_NOISE
    initiator_keys = consume_response(initiator, initiator_state, PSK, response)
    ping = crypto.aead_encrypt(initiator_keys.send_key, 0, b"ping", b"")
    pong = crypto.aead_encrypt(responder_keys.send_key, 0, b"pong", b"")
    assert ping == KAT_PING_INITIATOR_TO_RESPONDER
    assert pong == KAT_PONG_RESPONDER_TO_INITIATOR


def test_initiation_layout(initiator: LocalIdentity, responder: LocalIdentity) -> None:
    initiation, state = _initiate(initiator, responder)
    assert len(initiation) == 148
    assert initiation[:4] == b"\x01\0\0\0"
    assert initiation[4:8] == INITIATOR_INDEX.to_bytes(4, "little")
    assert initiation[8:40] == crypto.public_key(state.ephemeral_private)
    assert initiation[116:] == bytes(32), "mac1 and mac2 are left to cookie.py"
    assert state.sender_index == INITIATOR_INDEX
    assert state.remote_static == responder.public_key


@pytest.mark.parametrize("psk", [NO_PSK, PSK], ids=["no-psk", "psk"])
def test_both_sides_derive_the_same_keys_in_opposite_directions(
    initiator: LocalIdentity, responder: LocalIdentity, psk: bytes
) -> None:
    initiation, initiator_state = _initiate(initiator, responder)
    responder_state = consume_initiation(responder, initiation)
    assert responder_state.remote_static == initiator.public_key
    assert responder_state.remote_index == INITIATOR_INDEX
    assert responder_state.timestamp == TIMESTAMP

    response, responder_keys = _respond(responder, responder_state, psk)
    assert len(response) == 92
    assert response[:4] == b"\x02\0\0\0"
    assert response[60:] == bytes(32)
    initiator_keys = consume_response(initiator, initiator_state, psk, response)

    assert initiator_keys.send_key == responder_keys.receive_key
    assert initiator_keys.receive_key == responder_keys.send_key
    assert initiator_keys.send_key != initiator_keys.receive_key
    assert (initiator_keys.local_index, initiator_keys.remote_index) == (
        INITIATOR_INDEX,
        RESPONDER_INDEX,
    )
    assert (responder_keys.local_index, responder_keys.remote_index) == (
        RESPONDER_INDEX,
        INITIATOR_INDEX,
    )
    assert initiator_keys.is_initiator and not responder_keys.is_initiator


def test_consumers_also_take_parsed_messages(
    initiator: LocalIdentity, responder: LocalIdentity
) -> None:
    initiation, initiator_state = _initiate(initiator, responder)
    responder_state = consume_initiation(responder, parse_initiation(initiation))
    response, responder_keys = _respond(responder, responder_state, NO_PSK)
    keys = consume_response(initiator, initiator_state, NO_PSK, parse_response(bytes(response)))
    assert keys.send_key == responder_keys.receive_key


def test_every_handshake_uses_fresh_keys(
    initiator: LocalIdentity, responder: LocalIdentity
) -> None:
    first, _ = _respond(
        responder, consume_initiation(responder, _initiate(initiator, responder)[0]), PSK
    )
    second, _ = _respond(
        responder, consume_initiation(responder, _initiate(initiator, responder)[0]), PSK
    )
    assert first[12:60] != second[12:60]


# The sender index (4:8) is authenticated by mac1 only, which cookie.py checks.
@pytest.mark.parametrize("position", [*range(4), *range(8, 116)])
def test_a_tampered_initiation_is_refused(
    initiator: LocalIdentity, responder: LocalIdentity, position: int
) -> None:
    initiation, _ = _initiate(initiator, responder)
    initiation[position] ^= 0x01
    with pytest.raises(HandshakeError) as caught:
        consume_initiation(responder, initiation)
    expected = DropReason.MALFORMED if position < 4 else DropReason.HANDSHAKE_FAILED
    assert caught.value.reason == expected


# The sender index (4:8) is authenticated by mac1 only, which cookie.py checks.
@pytest.mark.parametrize("position", [*range(4), *range(8, 60)])
def test_a_tampered_response_is_refused(
    initiator: LocalIdentity, responder: LocalIdentity, position: int
) -> None:
    initiation, initiator_state = _initiate(initiator, responder)
    response, _ = _respond(responder, consume_initiation(responder, initiation), PSK)
    response[position] ^= 0x01
    with pytest.raises(HandshakeError) as caught:
        consume_response(initiator, initiator_state, PSK, response)
    if position < 4:
        assert caught.value.reason == DropReason.MALFORMED
    elif position < 12:
        assert caught.value.reason == DropReason.UNKNOWN_INDEX
    else:
        assert caught.value.reason == DropReason.HANDSHAKE_FAILED


@pytest.mark.parametrize(
    "responder_psk, initiator_psk", [(PSK, NO_PSK), (NO_PSK, PSK), (PSK, bytes([6]) * 32)]
)
def test_a_wrong_preshared_key_fails(
    initiator: LocalIdentity,
    responder: LocalIdentity,
    responder_psk: bytes,
    initiator_psk: bytes,
) -> None:
    initiation, initiator_state = _initiate(initiator, responder)
    response, _ = _respond(responder, consume_initiation(responder, initiation), responder_psk)
    with pytest.raises(HandshakeError) as caught:
        consume_response(initiator, initiator_state, initiator_psk, response)
    assert caught.value.reason == DropReason.HANDSHAKE_FAILED


def test_an_initiation_for_another_key_fails(
    initiator: LocalIdentity, responder: LocalIdentity
) -> None:
    initiation, _ = _initiate(initiator, responder)
    bystander = LocalIdentity.from_private_key(crypto.generate_private_key())
    with pytest.raises(HandshakeError) as caught:
        consume_initiation(bystander, initiation)
    assert caught.value.reason == DropReason.HANDSHAKE_FAILED


def test_a_low_order_ephemeral_is_refused(
    initiator: LocalIdentity, responder: LocalIdentity
) -> None:
    initiation, _ = _initiate(initiator, responder)
    initiation[8:40] = bytes(32)
    with pytest.raises(HandshakeError) as caught:
        consume_initiation(responder, initiation)
    assert caught.value.reason == DropReason.HANDSHAKE_FAILED


@pytest.mark.parametrize("size", [0, 147, 149])
def test_a_wrong_size_initiation_is_malformed(responder: LocalIdentity, size: int) -> None:
    message = bytearray(size)
    if size:
        message[0] = 1
    with pytest.raises(HandshakeError) as caught:
        consume_initiation(responder, message)
    assert caught.value.reason == DropReason.MALFORMED
