"""Parsers take hostile bytes: each returns a value or raises MessageError, never anything else."""

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotif.packet.ip import packet_addresses
from pilotif.wg.constants import TRANSPORT_MIN_SIZE
from pilotif.wg.drops import DropReason
from pilotif.wg.messages import (
    MessageError,
    pack_transport_header,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
    parse_transport_header,
)

PARSERS: list[Callable[[bytes], object]] = [
    parse_initiation,
    parse_response,
    parse_cookie_reply,
    parse_transport_header,
]
SIZES: dict[Callable[[bytes], object], int] = {
    parse_initiation: 148,
    parse_response: 92,
    parse_cookie_reply: 64,
}
TYPES: dict[Callable[[bytes], object], int] = {
    parse_initiation: 1,
    parse_response: 2,
    parse_cookie_reply: 3,
    parse_transport_header: 4,
}
U32 = st.integers(min_value=0, max_value=2**32 - 1)
U64 = st.integers(min_value=0, max_value=2**64 - 1)


def _near_valid(parser: Callable[[bytes], object]) -> st.SearchStrategy[bytes]:
    """Messages with the right type byte and about the right size, to reach the deep paths."""
    size = SIZES.get(parser, TRANSPORT_MIN_SIZE)
    body = st.binary(min_size=max(0, size - 6), max_size=size + 40)
    reserved = st.sampled_from([b"\0\0\0", b"\0\0\1", b"\x80\0\0"])
    return st.builds(lambda r, b: bytes([TYPES[parser]]) + r + b, reserved, body)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda parser: parser.__name__)
@given(data=st.data())
def test_parsers_return_or_raise_message_error(
    parser: Callable[[bytes], object], data: st.DataObject
) -> None:
    message = data.draw(st.one_of(st.binary(max_size=200), _near_valid(parser)))
    try:
        parser(message)
    except MessageError as exc:
        assert exc.reason == DropReason.MALFORMED


@given(message=st.binary(min_size=148, max_size=148))
def test_initiation_fields_round_trip(message: bytes) -> None:
    message = b"\x01\0\0\0" + message[4:]
    parsed = parse_initiation(message)
    assert parsed.sender == int.from_bytes(message[4:8], "little")
    assert (
        parsed.unencrypted_ephemeral
        + parsed.encrypted_static
        + parsed.encrypted_timestamp
        + parsed.mac1
        + parsed.mac2
    ) == message[8:]


@given(message=st.binary(min_size=92, max_size=92))
def test_response_fields_round_trip(message: bytes) -> None:
    message = b"\x02\0\0\0" + message[4:]
    parsed = parse_response(message)
    assert (parsed.sender, parsed.receiver) == struct.unpack_from("<II", message, 4)
    assert (
        parsed.unencrypted_ephemeral + parsed.encrypted_nothing + parsed.mac1 + parsed.mac2
    ) == message[12:]


@given(message=st.binary(min_size=64, max_size=64))
def test_cookie_reply_fields_round_trip(message: bytes) -> None:
    message = b"\x03\0\0\0" + message[4:]
    parsed = parse_cookie_reply(message)
    assert parsed.receiver == int.from_bytes(message[4:8], "little")
    assert parsed.nonce + parsed.encrypted_cookie == message[8:]


@given(receiver=U32, counter=U64, offset=st.integers(0, 8), payload=st.binary(min_size=16))
def test_transport_header_round_trip(
    receiver: int, counter: int, offset: int, payload: bytes
) -> None:
    buf = bytearray(offset + 16) + payload
    pack_transport_header(buf, offset, receiver, counter)
    assert buf[offset : offset + 4] == b"\x04\0\0\0"
    assert parse_transport_header(memoryview(buf)[offset:]) == (receiver, counter)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"\x04\0\0\0" + bytes(27), id="short"),
        pytest.param(b"\x04\0\1\0" + bytes(28), id="reserved"),
        pytest.param(b"\x01\0\0\0" + bytes(28), id="type"),
    ],
)
def test_bad_transport_headers_are_malformed(message: bytes) -> None:
    with pytest.raises(MessageError) as caught:
        parse_transport_header(message)
    assert caught.value.reason == DropReason.MALFORMED


@given(
    packet=st.one_of(
        st.binary(max_size=120),
        st.builds(
            lambda v, b: bytes([v]) + b,
            st.sampled_from([0x45, 0x46, 0x4F, 0x60]),
            st.binary(max_size=120),
        ),
    )
)
def test_packet_addresses_returns_a_consistent_result_or_none(packet: bytes) -> None:
    result = packet_addresses(packet)
    if result is not None:
        source, destination, total_length = result
        assert len(source) == len(destination) in (4, 16)
        assert total_length <= len(packet)
