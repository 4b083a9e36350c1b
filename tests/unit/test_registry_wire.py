"""The registry wire codec: sealed control messages, relay and key messages."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotif.control.wire import (
    CONTROL_HEADER_SIZE,
    CONTROL_REPLAY_WINDOW,
    KEY_REQUEST,
    MAX_COUNTER,
    MAX_PAYLOAD_BYTES,
    RELAY_HEADER_SIZE,
    RELAY_TYPE,
    ControlChannel,
    StaleCounter,
    WireError,
    control_sender,
    format_endpoint,
    pack_key_reply,
    pack_relay,
    parse_endpoint,
    unpack_key_reply,
    unpack_relay,
)
from pilotif.wg.crypto import aead_encrypt, dh, generate_private_key, hash_, kdf2, public_key

NODE_PRIVATE = generate_private_key()
REGISTRY_PRIVATE = generate_private_key()
NODE_PUBLIC = public_key(NODE_PRIVATE)
REGISTRY_PUBLIC = public_key(REGISTRY_PRIVATE)
COUNTER = 1_700_000_000_000_000_000
MESSAGE = {"op": "register", "id": 1, "hostname": "alpha", "tags": ["gpu"], "lan": []}


def node_side() -> ControlChannel:
    return ControlChannel(NODE_PRIVATE, REGISTRY_PUBLIC, local_is_registry=False)


def registry_side() -> ControlChannel:
    return ControlChannel(REGISTRY_PRIVATE, NODE_PUBLIC, local_is_registry=True)


def test_a_sealed_message_opens_on_the_other_side_both_ways() -> None:
    node, registry = node_side(), registry_side()
    assert registry.open(node.seal(MESSAGE, COUNTER)) == MESSAGE
    reply = {"op": "reply", "id": 1, "ok": True, "text": "ünïcode"}
    assert node.open(registry.seal(reply, COUNTER)) == reply
    assert registry.highest_counter == COUNTER


def test_the_header_names_the_sender_and_counter() -> None:
    datagram = node_side().seal(MESSAGE, COUNTER)
    assert datagram[:4] == bytes((0x50, 0, 0, 0))
    assert control_sender(datagram) == NODE_PUBLIC
    assert int.from_bytes(datagram[36:CONTROL_HEADER_SIZE], "little") == COUNTER


def test_a_replayed_message_is_refused_and_says_the_floor() -> None:
    datagram = node_side().seal(MESSAGE, COUNTER)
    registry = registry_side()
    registry.open(datagram)
    with pytest.raises(StaleCounter) as refused:
        registry.open(datagram)
    assert (refused.value.reason, refused.value.floor) == ("stale_counter", COUNTER)
    assert refused.value.message == MESSAGE


def test_a_restored_counter_refuses_older_messages_after_a_restart() -> None:
    node = node_side()
    old = node.seal(MESSAGE, COUNTER)
    restarted = registry_side()
    restarted.restore_counter(COUNTER)
    with pytest.raises(StaleCounter) as refused:
        restarted.open(old)
    assert refused.value.floor == COUNTER
    assert restarted.open(node.seal(MESSAGE, COUNTER + 1)) == MESSAGE


def test_a_forged_old_counter_is_not_called_stale() -> None:
    """Only an authentic message learns the floor: a forgery fails to decrypt."""
    registry = registry_side()
    registry.restore_counter(COUNTER)
    forged = bytearray(node_side().seal(MESSAGE, COUNTER - 1))
    forged[-1] ^= 1
    with pytest.raises(WireError) as refused:
        registry.open(bytes(forged))
    assert refused.value.reason == "decrypt_failed"


def test_a_message_sealed_in_the_wrong_direction_does_not_open() -> None:
    # A node's message reflected back to it: same key pair, wrong direction key.
    datagram = registry_side().seal(MESSAGE, COUNTER)
    mirror = ControlChannel(NODE_PRIVATE, REGISTRY_PUBLIC, local_is_registry=True)
    with pytest.raises(WireError) as refused:
        mirror.open(datagram)
    assert refused.value.reason == "decrypt_failed"


def test_a_message_from_another_key_is_refused() -> None:
    stranger = ControlChannel(generate_private_key(), REGISTRY_PUBLIC, local_is_registry=False)
    with pytest.raises(WireError) as refused:
        registry_side().open(stranger.seal(MESSAGE, COUNTER))
    assert refused.value.reason == "wrong_sender"


def test_a_payload_over_the_limit_cannot_be_sealed() -> None:
    big = {"op": "x", "pad": "a" * MAX_PAYLOAD_BYTES}
    with pytest.raises(ValueError, match="exceeds"):
        node_side().seal(big, COUNTER)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'{"id": 1}', b'{"op": 5}', b"\xff\xfe", b"{"])
def test_an_authentic_payload_that_is_not_an_object_with_an_op_is_malformed(
    payload: bytes,
) -> None:
    to_registry, _ = kdf2(hash_(b"pilotif control v1"), dh(NODE_PRIVATE, REGISTRY_PUBLIC))
    header = bytes((0x50, 0, 0, 0)) + NODE_PUBLIC + COUNTER.to_bytes(8, "little")
    datagram = header + aead_encrypt(to_registry, COUNTER, payload, header)
    with pytest.raises(WireError) as refused:
        registry_side().open(datagram)
    assert refused.value.reason == "malformed"


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_changing_any_byte_makes_the_message_fail(position: int, flip: int) -> None:
    datagram = bytearray(node_side().seal(MESSAGE, COUNTER))
    position %= len(datagram)
    datagram[position] ^= flip or 1
    with pytest.raises(WireError):
        registry_side().open(bytes(datagram))


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_wire_error_only(data: bytes) -> None:
    registry = registry_side()
    for parse in (registry.open, control_sender, unpack_relay, unpack_key_reply):
        with contextlib.suppress(WireError):
            parse(data)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_after_a_control_header_raise_wire_error_only(tail: bytes) -> None:
    header = bytes((0x50, 0, 0, 0)) + NODE_PUBLIC + COUNTER.to_bytes(8, "little")
    with pytest.raises(WireError):
        registry_side().open(header + tail)


@given(st.binary(min_size=1, max_size=1500))
def test_relay_round_trip(inner: bytes) -> None:
    datagram = pack_relay(NODE_PUBLIC, inner)
    assert datagram[0] == RELAY_TYPE
    assert len(datagram) == RELAY_HEADER_SIZE + len(inner)
    assert unpack_relay(datagram) == (NODE_PUBLIC, inner)


def test_a_relay_message_without_a_datagram_is_malformed() -> None:
    with pytest.raises(WireError):
        unpack_relay(pack_relay(NODE_PUBLIC, b""))


def test_the_key_reply_carries_the_registry_key_and_the_request_is_not_a_reply() -> None:
    assert unpack_key_reply(pack_key_reply(REGISTRY_PUBLIC)) == REGISTRY_PUBLIC
    with pytest.raises(WireError):
        unpack_key_reply(KEY_REQUEST)


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [(("198.18.0.1", 51820), "198.18.0.1:51820"), (("fd00::1", 7946), "[fd00::1]:7946")],
)
def test_endpoints_are_written_ip_colon_port_and_read_back(
    endpoint: tuple[str, int], text: str
) -> None:
    assert format_endpoint(endpoint) == text
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["", "198.18.0.1", "host:80", "1.2.3.4:99999", "fd00::1:80", ":1"])
def test_text_that_is_not_an_endpoint_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_a_channel_given_its_own_public_key_seals_exactly_as_one_that_computes_it() -> None:
    given = ControlChannel(
        REGISTRY_PRIVATE, NODE_PUBLIC, local_is_registry=True, local_public=REGISTRY_PUBLIC
    )
    assert given.seal(MESSAGE, COUNTER) == registry_side().seal(MESSAGE, COUNTER)
    assert node_side().open(given.seal(MESSAGE, COUNTER + 1)) == MESSAGE


def test_counters_out_of_order_open_once_within_the_window() -> None:
    node, registry = node_side(), registry_side()
    late = node.seal(MESSAGE, COUNTER)
    assert registry.open(node.seal(MESSAGE, COUNTER + CONTROL_REPLAY_WINDOW - 1)) == MESSAGE
    assert registry.open(late) == MESSAGE
    with pytest.raises(StaleCounter):
        registry.open(late)


def test_a_counter_further_behind_than_the_window_is_refused() -> None:
    node, registry = node_side(), registry_side()
    too_late = node.seal(MESSAGE, COUNTER)
    registry.open(node.seal(MESSAGE, COUNTER + CONTROL_REPLAY_WINDOW))
    with pytest.raises(StaleCounter) as refused:
        registry.open(too_late)
    assert refused.value.floor == COUNTER + CONTROL_REPLAY_WINDOW


def test_a_restored_counter_keeps_the_window_behind_it() -> None:
    node, registry = node_side(), registry_side()
    registry.open(node.seal(MESSAGE, COUNTER))
    registry.restore_counter(COUNTER + 5)
    with pytest.raises(StaleCounter):
        registry.open(node.seal(MESSAGE, COUNTER + 5))
    assert registry.open(node.seal(MESSAGE, COUNTER + 6)) == MESSAGE
    assert registry.highest_counter == COUNTER + 6


def test_a_counter_far_ahead_empties_the_window_and_the_old_counters_stay_refused() -> None:
    # A registry restarted after an outage seals from a clock in nanoseconds: its first
    # reply is ~1e10 counters ahead per 10 s; the window used to shift by that many bits.
    node, registry = node_side(), registry_side()
    registry.open(node.seal(MESSAGE, COUNTER))
    assert registry.open(node.seal(MESSAGE, MAX_COUNTER)) == MESSAGE
    assert registry.open(node.seal(MESSAGE, MAX_COUNTER - 1)) == MESSAGE
    for stale in (MAX_COUNTER, MAX_COUNTER - 1, COUNTER + 1):
        with pytest.raises(StaleCounter):
            registry.open(node.seal(MESSAGE, stale))


def test_a_counter_restored_far_ahead_refuses_what_lies_below() -> None:
    node, registry = node_side(), registry_side()
    registry.open(node.seal(MESSAGE, COUNTER))
    registry.restore_counter(MAX_COUNTER - 1)
    with pytest.raises(StaleCounter):
        registry.open(node.seal(MESSAGE, MAX_COUNTER - 1))
    assert registry.open(node.seal(MESSAGE, MAX_COUNTER)) == MESSAGE
