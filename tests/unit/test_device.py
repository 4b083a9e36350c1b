"""The sans-IO WireGuard device: handshakes, data, drops, timers, cookies and roaming.

Two Devices (A and B, see conftest.py) talk to each other in memory on a fake
clock; the tests lose, replay, reorder and tamper with datagrams in flight.
"""

import itertools
from collections import deque
from ipaddress import IPv4Network

import pytest
from conftest import (
    MTU,
    NOW,
    Node,
    connect,
    current_keypair,
    deliver,
    exchange,
    ipv4_packet,
    make_node,
    make_pair,
    next_deadline,
    peer_of,
    run_timers,
    seal,
    take,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotif.node.policy import PeerIdentity, packet_filter, parse_policy
from pilotif.packet.icmp import echo_request_packet
from pilotif.wg.constants import (
    COOKIE_REPLY_SIZE,
    HANDSHAKE_INITIATION_RATE_S,
    INITIATION_SIZE,
    KEEPALIVE_TIMEOUT_S,
    MAX_STAGED_PACKETS,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME_S,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME_S,
    REKEY_ATTEMPT_TIME_S,
    REKEY_ON_RECEIVE_AGE_S,
    REKEY_TIMEOUT_JITTER_MAX_S,
    REKEY_TIMEOUT_S,
    REPLAY_WINDOW_SIZE,
    RESPONSE_SIZE,
    RETIRED_KEYPAIR_S,
    TRANSPORT_MIN_SIZE,
    UNDER_LOAD_HANDSHAKES_PER_S,
)
from pilotif.wg.cookie import CookieGenerator
from pilotif.wg.device import Device
from pilotif.wg.drops import DropReason
from pilotif.wg.events import (
    EndpointChanged,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
    RelayEndpoint,
)
from pilotif.wg.fastpath.rows import padded_length
from pilotif.wg.messages import TRANSPORT_HEADER
from pilotif.wg.peer import PeerTimers

PSK = bytes([0x42]) * 32
OTHER_PSK = bytes([0x24]) * 32
ROAMED_ENDPOINT = ("198.18.1.99", 40000)
FLOOD_SOURCE = ("198.18.1.66", 40001)
KEEPALIVE_SIZE = TRANSPORT_MIN_SIZE
PERSISTENT_KEEPALIVE_S = 25
_MAC2 = slice(INITIATION_SIZE - 16, INITIATION_SIZE)
_MAC1 = slice(INITIATION_SIZE - 32, INITIATION_SIZE - 16)
_SENDER_INDEX = slice(4, 8)
ICMP_ECHO, ICMP_ECHO_REPLY = 8, 0


def drops(node: Node) -> dict[DropReason, int]:
    """The non-zero drop counters of a node."""
    return {reason: count for reason, count in node.device.drops.items() if count}


def kinds(datagrams: list[bytes]) -> list[int]:
    """The message type of each datagram."""
    return [datagram[0] for datagram in datagrams]


def handshake(a: Node, b: Node, now: float) -> None:
    """A sends B a packet, the handshake runs, and all outputs are drained."""
    a.device.send((a.packet_to(b, b"first"),), now)
    exchange(a, b, now)
    assert b.to_tun == [a.packet_to(b, b"first")]
    for node in (a, b):
        node.to_tun.clear()
        node.events.clear()


def junk_initiation(responder: Device, now: float) -> bytes:
    """An initiation with a valid mac1 for `responder` but contents that cannot decrypt."""
    message = bytearray(INITIATION_SIZE)
    message[0] = MESSAGE_INITIATION
    message[4 : _MAC1.start] = bytes(range(7, 7 + _MAC1.start - 4))
    CookieGenerator(responder.public_key).add_macs(message, now)
    return bytes(message)


def flip(datagram: bytes, position: int) -> bytes:
    """The datagram with one byte inverted."""
    changed = bytearray(datagram)
    changed[position] ^= 0xFF
    return bytes(changed)


# -- handshake and data ------------------------------------------------------------


def test_first_packet_triggers_a_handshake_and_is_delivered_after_it(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    packet = a.packet_to(b, b"queued during the handshake")

    a.device.send((packet,), NOW)
    (initiation, endpoint), *rest = take(a)
    assert (len(initiation), initiation[0], endpoint, rest) == (
        INITIATION_SIZE,
        MESSAGE_INITIATION,
        b.endpoint,
        [],
    )

    b.device.receive((initiation,), a.endpoint, NOW)
    response = [d for d, _ in b.outgoing]
    assert kinds(response) == [MESSAGE_RESPONSE] and len(response[0]) == RESPONSE_SIZE
    assert peer_of(b, a).next is not None and peer_of(b, a).current is None

    deliver(b, a, NOW)
    assert a.events == [HandshakeCompleted(b.device.public_key, initiator=True)]
    assert kinds([d for d, _ in a.outgoing]) == [MESSAGE_TRANSPORT]

    deliver(a, b, NOW)
    assert b.to_tun == [packet]
    assert b.events == [HandshakeCompleted(a.device.public_key, initiator=False)]
    assert drops(a) == drops(b) == {}


def test_an_initiation_also_goes_to_the_probed_candidates_and_an_answer_there_wins(
    pair: tuple[Node, Node],
) -> None:
    """A peer whose relay cannot carry it (another registry replica) is reached directly:
    each initiation of a probe round goes to its candidates too."""
    a, b = pair
    relay_only = RelayEndpoint(b.device.public_key)
    a.device.set_endpoint(b.device.public_key, relay_only)
    a.device.probe_with_initiations(b.device.public_key, [b.endpoint])
    a.device.send((a.packet_to(b, b"hello"),), NOW)
    sent = take(a)
    assert [endpoint for _, endpoint in sent] == [relay_only, b.endpoint]
    assert sent[0][0] == sent[1][0], "one initiation, two paths"
    b.device.receive((sent[1][0],), a.endpoint, NOW)
    deliver(b, a, NOW)
    assert a.events == [
        EndpointChanged(b.device.public_key, b.endpoint),
        HandshakeCompleted(b.device.public_key, initiator=True),
    ]
    a.device.probe_with_initiations(b.device.public_key, [])
    assert peer_of(a, b).probe_endpoints == ()


def test_initiator_sends_a_keepalive_when_nothing_was_staged() -> None:
    a, b = make_node(1), make_node(2)
    connect(a, b, persistent_keepalive_s=PERSISTENT_KEEPALIVE_S)
    connect(b, a)
    a.device.handle_timer(NOW)
    assert kinds(deliver(a, b, NOW)) == [MESSAGE_INITIATION]
    staged_at_b = peer_of(b, a).next

    deliver(b, a, NOW)
    keepalive = deliver(a, b, NOW)

    assert [len(d) for d in keepalive] == [KEEPALIVE_SIZE]
    assert peer_of(b, a).current is staged_at_b and peer_of(b, a).next is None
    assert b.events == [HandshakeCompleted(a.device.public_key, initiator=False)]
    assert b.to_tun == []
    assert drops(b) == {}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("psk", [None, PSK], ids=["no-psk", "psk"])
def test_packets_flow_both_ways(v6: bool, psk: bytes | None) -> None:
    a, b = make_pair(preshared_key_a=psk, preshared_key_b=psk)
    handshake(a, b, NOW)
    to_b = [a.packet_to(b, bytes([n % 256]) * n, v6=v6) for n in (0, 1, 17, 300)]
    to_a = [b.packet_to(a, bytes([n % 256]) * n, v6=v6) for n in (5, 1000)]

    for packet in to_b:
        a.device.send((packet,), NOW + 1)
    for packet in to_a:
        b.device.send((packet,), NOW + 1)
    exchange(a, b, NOW + 1)

    assert b.to_tun == to_b
    assert a.to_tun == to_a
    assert drops(a) == drops(b) == {}


def test_mismatched_preshared_keys_fail_the_handshake() -> None:
    a, b = make_pair(preshared_key_a=PSK, preshared_key_b=OTHER_PSK)
    a.device.send((a.packet_to(b, b"never arrives"),), NOW)

    exchange(a, b, NOW)

    assert drops(a) == {DropReason.HANDSHAKE_FAILED: 1}
    assert a.events == []
    assert b.to_tun == []
    assert peer_of(a, b).current is None


@pytest.mark.parametrize(
    ("packet_size", "datagram_size"),
    [
        (20, 32 + 32),
        (32, 32 + 32),
        (33, 32 + 48),
        (1408, 32 + 1408),
        (1409, 32 + MTU),
        (MTU - 1, 32 + MTU),
        (MTU, 32 + MTU),
    ],
)
def test_transport_pads_to_a_multiple_of_16_capped_at_the_mtu(
    established: tuple[Node, Node], packet_size: int, datagram_size: int
) -> None:
    a, b = established
    packet = a.packet_to(b, bytes(packet_size - 20))
    a.device.send((packet,), NOW + 1)

    sent = deliver(a, b, NOW + 1)

    assert [len(d) for d in sent] == [datagram_size]
    assert b.to_tun == [packet]


def test_packets_beyond_the_staging_limit_drop_the_oldest(pair: tuple[Node, Node]) -> None:
    a, b = pair
    packets = [a.packet_to(b, n.to_bytes(2, "big")) for n in range(MAX_STAGED_PACKETS + 2)]
    for packet in packets:
        a.device.send((packet,), NOW)

    assert kinds([d for d, _ in a.outgoing]) == [MESSAGE_INITIATION]
    exchange(a, b, NOW)

    assert b.to_tun == packets[2:]
    assert drops(a) == {DropReason.QUEUE_FULL: 2}


def test_peer_without_endpoint_is_reached_once_it_initiates() -> None:
    a, b = make_node(1), make_node(2)
    a.device.add_peer(b.device.public_key, allowed_ips=[IPv4Network(f"{b.v4}/32")], now=NOW)
    connect(b, a)
    a.device.send((a.packet_to(b, b"where are you?"),), NOW)
    assert a.outgoing == []
    assert drops(a) == {DropReason.NO_ENDPOINT: 1}

    b.device.send((b.packet_to(a, b"here"),), NOW + 1)
    exchange(a, b, NOW + 1)
    a.device.send((a.packet_to(b, b"found you"),), NOW + 2)
    exchange(a, b, NOW + 2)

    assert EndpointChanged(b.device.public_key, b.endpoint) in a.events
    assert a.to_tun == [b.packet_to(a, b"here")]
    assert b.to_tun == [a.packet_to(b, b"found you")]


# -- drops ---------------------------------------------------------------------------


def test_replayed_transport_is_dropped_and_not_delivered_twice(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    packet = a.packet_to(b, b"once")
    a.device.send((packet,), NOW + 1)

    deliver(a, b, NOW + 1, lambda ds: ds * 2)

    assert b.to_tun == [packet]
    assert drops(b) == {DropReason.REPLAY: 1}


def test_out_of_order_packets_inside_the_window_are_accepted(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    packets = [a.packet_to(b, bytes([n])) for n in range(5)]
    for packet in packets:
        a.device.send((packet,), NOW + 1)

    deliver(a, b, NOW + 1, lambda ds: [ds[3], ds[0], ds[4], ds[2], ds[1]])

    assert b.to_tun == [packets[i] for i in (3, 0, 4, 2, 1)]
    assert drops(b) == {}


def test_packet_further_behind_than_the_replay_window_is_dropped(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    a.device.send((a.packet_to(b, b"late"),), NOW + 1)
    late = take(a)
    for _ in range(REPLAY_WINDOW_SIZE):
        a.device.send((a.packet_to(b),), NOW + 1)
    deliver(a, b, NOW + 1)
    b.to_tun.clear()

    b.device.receive((late[0][0],), a.endpoint, NOW + 1)

    assert b.to_tun == []
    assert drops(b) == {DropReason.REPLAY: 1}


def test_replayed_initiation_gets_no_new_response(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.device.send((a.packet_to(b),), NOW)
    initiation = take(a)[0][0]
    b.device.receive((initiation,), a.endpoint, NOW)
    take(b)

    b.device.receive((initiation,), a.endpoint, NOW + 1)

    assert b.outgoing == []
    assert drops(b) == {DropReason.REPLAYED_INITIATION: 1}


def test_initiation_from_an_unknown_key_is_dropped(pair: tuple[Node, Node]) -> None:
    _, b = pair
    stranger = make_node(3)
    connect(stranger, b)
    stranger.device.send((stranger.packet_to(b),), NOW)

    deliver(stranger, b, NOW)

    assert b.outgoing == []
    assert drops(b) == {DropReason.UNKNOWN_PEER: 1}


def test_second_initiation_sooner_than_the_rate_limit_is_dropped(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    a.device.send((a.packet_to(b),), NOW)
    first = take(a)[0][0]
    retry_at = next_deadline(a)
    assert retry_at is not None
    a.device.handle_timer(retry_at)
    second = take(a)[0][0]

    b.device.receive((first,), a.endpoint, retry_at)
    take(b)
    b.device.receive((second,), a.endpoint, retry_at + HANDSHAKE_INITIATION_RATE_S / 2)

    assert b.outgoing == []
    assert drops(b) == {DropReason.HANDSHAKE_RATE: 1}


def test_replayed_response_is_dropped_and_the_session_survives(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    a.device.send((a.packet_to(b),), NOW)
    deliver(a, b, NOW)
    (response,) = deliver(b, a, NOW)
    exchange(a, b, NOW)

    a.device.receive((response,), b.endpoint, NOW + 1)
    b.device.send((b.packet_to(a, b"still fine"),), NOW + 1)
    deliver(b, a, NOW + 1)

    assert drops(a) == {DropReason.UNKNOWN_INDEX: 1}
    assert a.to_tun == [b.packet_to(a, b"still fine")]


def test_cookie_reply_that_does_not_decrypt_or_matches_no_index_is_dropped(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    a.device.send((a.packet_to(b),), NOW)
    sender_index = take(a)[0][0][_SENDER_INDEX]
    forged = bytes([MESSAGE_COOKIE_REPLY, 0, 0, 0]) + sender_index + bytes(56)
    unsolicited = flip(forged, 4)

    a.device.receive((forged,), b.endpoint, NOW)
    a.device.receive((unsolicited,), b.endpoint, NOW)

    assert drops(a) == {DropReason.BAD_COOKIE: 1, DropReason.UNKNOWN_INDEX: 1}


def test_late_response_to_a_superseded_initiation_is_dropped(pair: tuple[Node, Node]) -> None:
    a, b = pair
    packet = a.packet_to(b, b"survives the lost response")
    a.device.send((packet,), NOW)
    deliver(a, b, NOW)
    late_response = take(b)
    retry_at = next_deadline(a)
    assert retry_at is not None
    a.device.handle_timer(retry_at)
    exchange(a, b, retry_at)

    a.device.receive((late_response[0][0],), b.endpoint, retry_at)
    a.device.send((a.packet_to(b, b"after"),), retry_at + 1)
    exchange(a, b, retry_at + 1)

    assert b.to_tun == [packet, a.packet_to(b, b"after")]
    assert drops(a) == {DropReason.UNKNOWN_INDEX: 1}
    assert drops(b) == {}


def _transport_with_reserved_byte(datagram: bytes) -> bytes:
    return datagram[:2] + b"\x01" + datagram[3:]


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: b"\x04garbage", id="short-garbage"),
        pytest.param(lambda d: d[: TRANSPORT_MIN_SIZE - 1], id="truncated-below-minimum"),
        pytest.param(lambda d: d[:-1], id="truncated-initiation"),
        pytest.param(lambda d: d + b"\x00", id="extended-initiation"),
        pytest.param(lambda d: b"\x05" + d[1:], id="unknown-type-5"),
        pytest.param(lambda d: b"\x00" + d[1:], id="unknown-type-0"),
        pytest.param(_transport_with_reserved_byte, id="non-zero-reserved-byte"),
        pytest.param(lambda d: b"\x02" + d[1:], id="initiation-relabelled-as-response"),
        pytest.param(lambda d: b"\x03" + d[1:], id="initiation-relabelled-as-cookie-reply"),
    ],
)
def test_malformed_datagrams_are_dropped(pair: tuple[Node, Node], mangle: object) -> None:
    a, b = pair
    a.device.send((a.packet_to(b),), NOW)
    initiation = take(a)[0][0]
    assert callable(mangle)

    b.device.receive((mangle(initiation),), a.endpoint, NOW)

    assert b.outgoing == []
    assert drops(b) == {DropReason.MALFORMED: 1}


def test_transport_with_non_zero_reserved_bytes_is_malformed(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    a.device.send((a.packet_to(b),), NOW + 1)

    deliver(a, b, NOW + 1, lambda ds: [_transport_with_reserved_byte(d) for d in ds])

    assert b.to_tun == []
    assert drops(b) == {DropReason.MALFORMED: 1}


@pytest.mark.parametrize("position", [_MAC1.start, _MAC1.stop - 1, 40], ids=str)
def test_initiation_with_a_bad_mac1_is_dropped(pair: tuple[Node, Node], position: int) -> None:
    a, b = pair
    a.device.send((a.packet_to(b),), NOW)

    deliver(a, b, NOW, lambda ds: [flip(d, position) for d in ds])

    assert b.outgoing == []
    assert drops(b) == {DropReason.BAD_MAC1: 1}


def test_corrupted_transport_ciphertext_fails_to_decrypt(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    a.device.send((a.packet_to(b, b"payload"),), NOW + 1)

    deliver(a, b, NOW + 1, lambda ds: [flip(d, 20) for d in ds])

    assert b.to_tun == []
    assert drops(b) == {DropReason.DECRYPT_FAILED: 1}


def test_transport_for_an_unknown_receiver_index_is_dropped(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    a.device.send((a.packet_to(b),), NOW + 1)

    deliver(a, b, NOW + 1, lambda ds: [flip(d, 5) for d in ds])

    assert b.to_tun == []
    assert drops(b) == {DropReason.UNKNOWN_INDEX: 1}


def test_decrypted_packet_from_an_address_the_peer_does_not_own_is_dropped(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    for spoofed in ("100.64.0.99", str(b.v4)):
        a.device.send((ipv4_packet(spoofed, b.v4, b"spoofed"),), NOW + 1)

    deliver(a, b, NOW + 1)

    assert b.to_tun == []
    assert drops(b) == {DropReason.SOURCE_NOT_ALLOWED: 2}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x00" * 20, id="version-0"),
        pytest.param(b"\x45" + b"\x00" * 10, id="short-ipv4"),
        pytest.param(b"\x45\x00\x00\xff" + b"\x00" * 16, id="ipv4-longer-than-payload"),
        pytest.param(b"\x60" + b"\x00" * 20, id="short-ipv6"),
    ],
)
def test_decrypted_payload_that_is_not_ip_is_dropped(
    established: tuple[Node, Node], payload: bytes
) -> None:
    a, b = established
    keypair = current_keypair(a, b)

    b.device.receive((seal(keypair, payload),), a.endpoint, NOW + 1)

    assert b.to_tun == []
    assert drops(b) == {DropReason.NOT_IP: 1}


def test_packet_from_tun_to_an_address_no_peer_owns_is_dropped(
    established: tuple[Node, Node],
) -> None:
    a, _ = established
    a.device.send((ipv4_packet(a.v4, "100.64.0.77"),), NOW + 1)
    a.device.send((b"\x00not an ip packet at all",), NOW + 1)

    assert a.outgoing == []
    assert drops(a) == {DropReason.NO_ROUTE: 1, DropReason.NOT_IP: 1}


def _message(kind: int, size: int) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda reserved, body: bytes([kind]) + reserved + body,
        st.sampled_from([b"\x00\x00\x00", b"\x00\x01\x00"]),
        st.binary(min_size=size - 4, max_size=size - 4),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(["raw", "typed", "transport", "flipped"]),
    data=st.data(),
)
def test_arbitrary_datagrams_never_raise_and_count_exactly_one_drop(
    shape: str, data: st.DataObject
) -> None:
    a, b = make_pair()
    a.device.send((a.packet_to(b),), NOW)
    initiation = take(a)[0][0]
    b.device.receive((initiation,), a.endpoint, NOW)
    exchange(a, b, NOW)
    a.device.send((a.packet_to(b),), NOW)
    transport = take(a)[0][0]
    b.device.receive((transport,), a.endpoint, NOW)
    before = sum(b.device.drops.values())
    to_tun_before = list(b.to_tun)
    if shape == "raw":
        datagram = data.draw(st.binary(max_size=300))
    elif shape == "typed":
        datagram = data.draw(
            st.one_of(
                _message(MESSAGE_INITIATION, INITIATION_SIZE),
                _message(MESSAGE_RESPONSE, RESPONSE_SIZE),
                _message(MESSAGE_COOKIE_REPLY, COOKIE_REPLY_SIZE),
                _message(MESSAGE_TRANSPORT, data.draw(st.integers(32, 200))),
            )
        )
    elif shape == "transport":
        keypair = current_keypair(b, a)
        index = data.draw(st.sampled_from([keypair.local_index, 0, 2**32 - 1]))
        counter = data.draw(st.integers(0, 2**64 - 1))
        body = data.draw(st.binary(min_size=16, max_size=200))
        datagram = TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, index, counter) + body
    else:
        original = data.draw(st.sampled_from([initiation, transport]))
        datagram = flip(original, data.draw(st.integers(0, len(original) - 1)))

    b.device.receive((datagram,), FLOOD_SOURCE, NOW + 1)

    assert sum(b.device.drops.values()) == before + 1
    assert b.to_tun == to_tun_before
    assert b.outgoing == []


# -- timers ------------------------------------------------------------------------


def test_lost_response_makes_the_initiator_retransmit_after_rekey_timeout(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    packet = a.packet_to(b, b"patience")
    a.device.send((packet,), NOW)
    first = deliver(a, b, NOW)
    take(b)
    deadline = next_deadline(a)
    assert deadline is not None
    assert NOW + REKEY_TIMEOUT_S <= deadline <= NOW + REKEY_TIMEOUT_S + REKEY_TIMEOUT_JITTER_MAX_S

    a.device.handle_timer(deadline - 0.001)
    assert a.outgoing == []
    a.device.handle_timer(deadline)
    retry = [d for d, _ in a.outgoing]
    assert kinds(retry) == [MESSAGE_INITIATION]
    assert retry[0][_SENDER_INDEX] != first[0][_SENDER_INDEX]

    exchange(a, b, deadline)
    assert b.to_tun == [packet]


def test_initiator_gives_up_after_rekey_attempt_time(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.device.send((a.packet_to(b, b"one"),), NOW)
    a.device.send((a.packet_to(b, b"two"),), NOW + 1)
    sent_at = [NOW]
    take(a)
    now = NOW
    while not a.events:
        deadline = next_deadline(a)
        assert deadline is not None and deadline > now
        now = deadline
        a.device.handle_timer(now)
        if take(a):
            sent_at.append(now)
    gave_up_at = now

    assert a.events == [HandshakeGaveUp(b.device.public_key)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
    assert all(REKEY_TIMEOUT_S <= g <= REKEY_TIMEOUT_S + REKEY_TIMEOUT_JITTER_MAX_S for g in gaps)
    latest = NOW + REKEY_ATTEMPT_TIME_S + len(sent_at) * REKEY_TIMEOUT_JITTER_MAX_S
    assert NOW + REKEY_ATTEMPT_TIME_S <= gave_up_at <= latest
    assert drops(a) == {DropReason.HANDSHAKE_GAVE_UP: 2}
    a.device.handle_timer(gave_up_at + REKEY_ATTEMPT_TIME_S)
    assert a.outgoing == []

    retry = a.packet_to(b, b"try again")
    a.device.send((retry,), gave_up_at + REKEY_ATTEMPT_TIME_S)
    exchange(a, b, gave_up_at + REKEY_ATTEMPT_TIME_S)
    assert b.to_tun == [retry]


def test_receiver_with_nothing_to_send_sends_a_passive_keepalive(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    assert next_deadline(b) == NOW + KEEPALIVE_TIMEOUT_S

    b.device.handle_timer(NOW + KEEPALIVE_TIMEOUT_S - 0.001)
    assert b.outgoing == []
    b.device.handle_timer(NOW + KEEPALIVE_TIMEOUT_S)
    keepalive = deliver(b, a, NOW + KEEPALIVE_TIMEOUT_S)

    assert [(d[0], len(d)) for d in keepalive] == [(MESSAGE_TRANSPORT, KEEPALIVE_SIZE)]
    assert a.to_tun == []
    assert drops(a) == {}
    a.device.handle_timer(NOW + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S)
    assert a.outgoing == []


def test_no_passive_keepalive_when_the_receiver_replied_with_data(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    b.device.send((b.packet_to(a, b"reply"),), NOW + 1)
    take(b)

    b.device.handle_timer(NOW + KEEPALIVE_TIMEOUT_S)

    assert b.outgoing == []


def test_data_without_reply_starts_a_new_handshake(established: tuple[Node, Node]) -> None:
    a, b = established
    run_timers(a, b, NOW + 30)
    sent = NOW + 30
    a.device.send((a.packet_to(b, b"anyone there?"),), sent)
    deliver(a, b, sent)

    b.device.handle_timer(sent + KEEPALIVE_TIMEOUT_S)
    take(b)
    a.device.handle_timer(sent + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S - 0.001)
    assert a.outgoing == []
    a.device.handle_timer(sent + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S)

    assert kinds([d for d, _ in a.outgoing]) == [MESSAGE_INITIATION]


def test_initiator_rekeys_after_rekey_after_time_without_losing_packets(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    now = NOW + REKEY_AFTER_TIME_S + 1
    in_flight_to_b = a.packet_to(b, b"sent under the old keypair")
    a.device.send((in_flight_to_b,), now)
    old_transport, initiation = (d for d, _ in take(a))
    assert kinds([old_transport, initiation]) == [MESSAGE_TRANSPORT, MESSAGE_INITIATION]

    b.device.receive((initiation,), a.endpoint, now)
    in_flight_to_a = b.packet_to(a, b"B still on the old keypair")
    b.device.send((in_flight_to_a,), now)
    response, b_old_transport = (d for d, _ in take(b))
    assert kinds([response, b_old_transport]) == [MESSAGE_RESPONSE, MESSAGE_TRANSPORT]

    a.device.receive((response,), b.endpoint, now)
    a.device.receive((b_old_transport,), b.endpoint, now)
    after_rekey = a.packet_to(b, b"sent under the new keypair")
    a.device.send((after_rekey,), now)
    deliver(a, b, now)
    b.device.receive((old_transport,), a.endpoint, now)

    assert a.to_tun == [in_flight_to_a]
    assert b.to_tun == [after_rekey, in_flight_to_b]
    assert a.events == [HandshakeCompleted(b.device.public_key, initiator=True)]
    assert b.events == [HandshakeCompleted(a.device.public_key, initiator=False)]
    assert drops(a) == drops(b) == {}


def test_initiator_rekeys_when_receiving_on_an_aging_session(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    now = NOW + REKEY_ON_RECEIVE_AGE_S + 1
    b.device.send((b.packet_to(a, b"late in the session"),), now)

    deliver(b, a, now)

    assert kinds([d for d, _ in a.outgoing]) == [MESSAGE_INITIATION]


def test_packets_under_a_keypair_older_than_reject_after_time_are_dropped(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    a.device.send((a.packet_to(b, b"too late"),), NOW + REJECT_AFTER_TIME_S - 1)
    transport = next(d for d, _ in take(a) if d[0] == MESSAGE_TRANSPORT)

    b.device.receive((transport,), a.endpoint, NOW + REJECT_AFTER_TIME_S + 1)

    assert b.to_tun == []
    assert drops(b) == {DropReason.KEY_EXPIRED: 1}


def test_sender_with_an_expired_keypair_starts_a_new_handshake_instead(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    now = NOW + REJECT_AFTER_TIME_S
    packet = b.packet_to(a, b"needs fresh keys")
    b.device.send((packet,), now)

    assert kinds([d for d, _ in b.outgoing]) == [MESSAGE_INITIATION]
    exchange(a, b, now)
    assert a.to_tun == [packet]
    assert drops(a) == drops(b) == {}


@pytest.mark.parametrize("sender", ["initiator", "responder"])
def test_sender_rekeys_after_rekey_after_messages(
    established: tuple[Node, Node], sender: str
) -> None:
    a, b = established
    source, destination = (a, b) if sender == "initiator" else (b, a)
    keypair = current_keypair(source, destination)
    keypair.send_counter = REKEY_AFTER_MESSAGES
    packet = source.packet_to(destination, b"many messages later")
    now = NOW + REKEY_TIMEOUT_S + 1

    source.device.send((packet,), now)
    sent = deliver(source, destination, now)

    assert kinds(sent) == [MESSAGE_TRANSPORT, MESSAGE_INITIATION]
    assert destination.to_tun == [packet]


def test_sender_past_reject_after_messages_starts_a_new_handshake_instead(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    keypair = current_keypair(a, b)
    keypair.send_counter = REJECT_AFTER_MESSAGES
    packet = a.packet_to(b, b"needs fresh keys")
    now = NOW + REKEY_TIMEOUT_S + 1

    a.device.send((packet,), now)

    assert kinds([d for d, _ in a.outgoing]) == [MESSAGE_INITIATION]
    exchange(a, b, now)
    assert b.to_tun == [packet]


def test_keys_are_zeroed_after_three_reject_times_and_nothing_decrypts(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    a.device.send((a.packet_to(b, b"held back"),), NOW + 1)
    held = take(a)

    run_timers(a, b, NOW + REJECT_AFTER_TIME_S * 3)

    assert KeysZeroed(b.device.public_key) in a.events
    assert KeysZeroed(a.device.public_key) in b.events
    assert peer_of(a, b).keypairs() == peer_of(b, a).keypairs() == []
    b.device.receive((held[0][0],), a.endpoint, NOW + REJECT_AFTER_TIME_S * 3)
    assert b.to_tun == []
    assert drops(b) == {DropReason.UNKNOWN_INDEX: 1}

    fresh = a.packet_to(b, b"a new session")
    a.device.send((fresh,), NOW + REJECT_AFTER_TIME_S * 3 + 1)
    exchange(a, b, NOW + REJECT_AFTER_TIME_S * 3 + 1)
    assert b.to_tun == [fresh]


def test_persistent_keepalive_is_sent_every_interval_of_silence() -> None:
    a, b = make_node(1), make_node(2)
    connect(a, b, persistent_keepalive_s=PERSISTENT_KEEPALIVE_S)
    connect(b, a)
    assert next_deadline(a) == NOW
    a.device.handle_timer(NOW)
    exchange(a, b, NOW)
    assert peer_of(b, a).current is not None

    keepalives_at = []
    for step in (1, 2):
        now = NOW + step * PERSISTENT_KEEPALIVE_S
        assert next_deadline(a) == now
        a.device.handle_timer(now)
        keepalives_at += [now for d in deliver(a, b, now) if len(d) == KEEPALIVE_SIZE]
    data_at = NOW + 2 * PERSISTENT_KEEPALIVE_S + 5
    a.device.send((a.packet_to(b, b"data resets the interval"),), data_at)
    deliver(a, b, data_at)

    assert keepalives_at == [NOW + PERSISTENT_KEEPALIVE_S, NOW + 2 * PERSISTENT_KEEPALIVE_S]
    assert peer_of(a, b).timers.persistent_keepalive == data_at + PERSISTENT_KEEPALIVE_S
    assert drops(b) == {}


def test_keepalive_on_a_session_older_than_rekey_after_time_starts_a_rekey() -> None:
    a, b = make_node(1), make_node(2)
    connect(a, b, persistent_keepalive_s=PERSISTENT_KEEPALIVE_S)
    connect(b, a)
    handshake(a, b, NOW)
    initiations_at = []
    now = NOW
    while now < NOW + REKEY_AFTER_TIME_S + PERSISTENT_KEEPALIVE_S:
        now = min(d for n in (a, b) if (d := next_deadline(n)) is not None)
        a.device.handle_timer(now)
        b.device.handle_timer(now)
        initiations_at += [now for d, _ in a.outgoing if d[0] == MESSAGE_INITIATION]
        exchange(a, b, now)

    assert initiations_at
    assert NOW + REKEY_AFTER_TIME_S < initiations_at[0] <= now


def test_next_timer_returns_the_earliest_deadline(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert next_deadline(a) is None
    a.device.send((a.packet_to(b),), NOW)
    retransmit = next_deadline(a)
    assert retransmit is not None
    assert NOW + REKEY_TIMEOUT_S <= retransmit <= NOW + REKEY_TIMEOUT_S + REKEY_TIMEOUT_JITTER_MAX_S

    third = make_node(3)
    connect(a, third, NOW + 1, persistent_keepalive_s=2)
    assert next_deadline(a) == NOW + 1
    a.device.handle_timer(NOW + 1)

    assert next_deadline(a) == NOW + 1 + 2


def test_get_timer_is_never_after_the_next_deadline_and_is_it_once_timers_ran() -> None:
    # What the packet pump re-arms its timer with after every input: a bound kept as
    # timers are armed (stopping or postponing one leaves it early, never late).
    a, b = make_node(1), make_node(2)
    connect(a, b, persistent_keepalive_s=PERSISTENT_KEEPALIVE_S)
    connect(b, a)
    now = NOW
    for step in range(400):
        if step % 7 < 3:
            a.device.send((a.packet_to(b, b"data"),), now)
        if step % 11 == 0:
            b.device.send((b.packet_to(a, b"back"),), now)
        exchange(a, b, now)
        for node in (a, b):
            node.to_tun.clear()
            deadline, bound = next_deadline(node), node.device.get_timer()
            assert deadline is None or (bound is not None and bound <= deadline)
        now = min(d for n in (a, b) if (d := n.device.get_timer()) is not None)
        now = min(now, NOW + step * 3.0)
        for node in (a, b):
            node.device.handle_timer(now)
            assert node.device.get_timer() == next_deadline(node)
    assert now > NOW + REJECT_AFTER_TIME_S
    assert drops(a) == drops(b) == {}


def test_asking_when_to_wake_looks_at_no_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    # A node with many peers answers after each input without visiting them all (the
    # scan cost 270 us a wake-up with 1,000 peers).
    a, b = make_pair()
    for index in range(3, 203):
        connect(a, make_node(index), persistent_keepalive_s=PERSISTENT_KEEPALIVE_S)
    handshake(a, b, NOW)
    visited: list[PeerTimers] = []
    original = PeerTimers.earliest

    def counting(timers: PeerTimers) -> float | None:
        visited.append(timers)
        return original(timers)

    monkeypatch.setattr(PeerTimers, "earliest", counting)
    a.device.send((a.packet_to(b, b"data"),), NOW + 1)
    exchange(a, b, NOW + 1)

    assert a.device.get_timer() == NOW
    assert visited == []
    a.device.handle_timer(NOW + 1)
    assert len(visited) == 201


# -- cookies under load ------------------------------------------------------------


def _flood(node: Node, now: float, count: int) -> None:
    junk = junk_initiation(node.device, now)
    for _ in range(count):
        node.device.receive((junk,), FLOOD_SOURCE, now)


def test_responder_under_load_answers_with_a_cookie_and_accepts_mac2(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    packet = a.packet_to(b, b"under load")
    _flood(b, NOW, UNDER_LOAD_HANDSHAKES_PER_S)
    a.device.send((packet,), NOW)

    deliver(a, b, NOW)
    assert drops(b) == {
        DropReason.HANDSHAKE_FAILED: UNDER_LOAD_HANDSHAKES_PER_S,
        DropReason.COOKIE_REQUIRED: 1,
    }
    ((reply, endpoint),) = b.outgoing
    assert (reply[0], len(reply), endpoint) == (MESSAGE_COOKIE_REPLY, COOKIE_REPLY_SIZE, a.endpoint)
    deliver(b, a, NOW)
    assert drops(a) == {}

    retry_at = next_deadline(a)
    assert retry_at is not None
    _flood(b, retry_at, UNDER_LOAD_HANDSHAKES_PER_S)
    a.device.handle_timer(retry_at)
    (retry,) = [d for d, _ in a.outgoing]
    assert retry[_MAC2] != bytes(16)
    deliver(a, b, retry_at)
    assert kinds([d for d, _ in b.outgoing]) == [MESSAGE_RESPONSE]
    assert b.device.drops[DropReason.COOKIE_REQUIRED] == 1
    exchange(a, b, retry_at)
    assert b.to_tun == [packet]


def test_a_relayed_initiation_under_load_gets_a_cookie_reply_bound_to_the_peer(
    pair: tuple[Node, Node],
) -> None:
    """Issue 9: under handshake load a relayed initiation reached
    `cookie.source_bytes(("relay", slot))`, whose ValueError escaped receive
    (which must never raise) and aborted the batch. Its cookie is now bound to the key the
    relay forwarded it from."""
    a, b = pair
    relayed = RelayEndpoint(a.device.public_key)
    b.device.set_endpoint(a.device.public_key, relayed)
    _flood(b, NOW, UNDER_LOAD_HANDSHAKES_PER_S)
    a.device.send((a.packet_to(b),), NOW)
    ((initiation, _),) = take(a)
    b.device.receive((initiation,), relayed, NOW)
    ((reply, endpoint),) = b.outgoing
    assert (reply[0], len(reply), endpoint) == (MESSAGE_COOKIE_REPLY, COOKIE_REPLY_SIZE, relayed)
    assert b.device.drops[DropReason.COOKIE_REQUIRED] == 1


def test_responder_at_the_load_limit_still_answers_normally(pair: tuple[Node, Node]) -> None:
    a, b = pair
    _flood(b, NOW, UNDER_LOAD_HANDSHAKES_PER_S - 1)
    a.device.send((a.packet_to(b),), NOW)

    deliver(a, b, NOW)

    assert kinds([d for d, _ in b.outgoing]) == [MESSAGE_RESPONSE]
    assert b.device.drops[DropReason.COOKIE_REQUIRED] == 0


# -- roaming -----------------------------------------------------------------------


def test_authenticated_transport_from_a_new_source_moves_the_endpoint(
    established: tuple[Node, Node],
) -> None:
    a, b = established
    a.device.send((a.packet_to(b, b"from a new network"),), NOW + 1)

    deliver(a, b, NOW + 1, from_endpoint=ROAMED_ENDPOINT)
    b.device.send((b.packet_to(a, b"reply"),), NOW + 1)

    assert b.events == [EndpointChanged(a.device.public_key, ROAMED_ENDPOINT)]
    assert [endpoint for _, endpoint in b.outgoing] == [ROAMED_ENDPOINT]


@pytest.mark.parametrize("attack", ["corrupted", "replayed", "replayed-initiation"])
def test_unauthenticated_or_replayed_datagram_does_not_move_the_endpoint(
    pair: tuple[Node, Node], attack: str
) -> None:
    a, b = pair
    a.device.send((a.packet_to(b),), NOW)
    initiation = take(a)[0][0]
    b.device.receive((initiation,), a.endpoint, NOW)
    exchange(a, b, NOW)
    a.device.send((a.packet_to(b, b"genuine"),), NOW + 1)
    (transport,) = deliver(a, b, NOW + 1)
    b.events.clear()
    forged = {
        "corrupted": flip(transport, 30),
        "replayed": transport,
        "replayed-initiation": initiation,
    }[attack]

    b.device.receive((forged,), ROAMED_ENDPOINT, NOW + 2)

    assert peer_of(b, a).endpoint == a.endpoint
    assert b.events == []
    assert sum(b.device.drops.values()) == 1


# -- simultaneous initiation -------------------------------------------------------


@pytest.mark.parametrize("late_side", [None, "a", "b"])
def test_simultaneous_initiation_ends_with_traffic_both_ways(late_side: str | None) -> None:
    a, b = make_pair()
    to_b, to_a = a.packet_to(b, b"from A"), b.packet_to(a, b"from B")
    a.device.send((to_b,), NOW)
    b.device.send((to_a,), NOW)
    init_a, init_b = take(a)[0][0], take(b)[0][0]

    if late_side != "a":
        b.device.receive((init_a,), a.endpoint, NOW)
    if late_side != "b":
        a.device.receive((init_b,), b.endpoint, NOW)
    exchange(a, b, NOW)
    if late_side == "a":
        b.device.receive((init_a,), a.endpoint, NOW)
    if late_side == "b":
        a.device.receive((init_b,), b.endpoint, NOW)
    exchange(a, b, NOW)

    assert a.to_tun == [to_a]
    assert b.to_tun == [to_b]
    later = [(a.packet_to(b, b"again A"), b.packet_to(a, b"again B"))]
    for packet_to_b, packet_to_a in later:
        a.device.send((packet_to_b,), NOW + 1)
        b.device.send((packet_to_a,), NOW + 1)
    exchange(a, b, NOW + 1)
    assert a.to_tun == [to_a, later[0][1]]
    assert b.to_tun == [to_b, later[0][0]]
    assert drops(a) == drops(b) == {}


def test_padding_rounds_up_to_16_but_stops_at_the_mtu() -> None:
    assert padded_length(0, MTU) == 0
    assert padded_length(1, MTU) == 16
    assert padded_length(MTU - 2, MTU) == MTU
    assert padded_length(MTU, MTU) == MTU
    assert padded_length(MTU + 5, MTU) == MTU + 5


def _both_initiators() -> tuple[Node, Node]:
    """A and B after initiations that crossed at NOW: each is the initiator of the
    session it sends under; outputs drained."""
    a, b = make_pair()
    a.device.send((a.packet_to(b, b"start A"),), NOW)
    b.device.send((b.packet_to(a, b"start B"),), NOW)
    exchange(a, b, NOW)
    assert current_keypair(a, b).is_initiator and current_keypair(b, a).is_initiator
    for node in (a, b):
        node.to_tun.clear()
    return a, b


def test_a_simultaneous_rekey_loses_no_packet_in_flight() -> None:
    """Both sides initiated at the start (a hole punch makes both do so), so both are
    initiators and both rekey at REKEY_AFTER_TIME: the initiations cross, and each side
    keeps sending under its old session until its own response arrives. WireGuard's three
    slots drop those packets (the responder's new `next` pushes the old session out);
    a keypair pushed out stays receivable for a short while, so none is lost."""
    a, b = _both_initiators()
    now = NOW + REKEY_AFTER_TIME_S + 1
    first_to_b, first_to_a = a.packet_to(b, b"A 1"), b.packet_to(a, b"B 1")
    a.device.send((first_to_b,), now)
    b.device.send((first_to_a,), now)
    (a_old, init_a), (b_old, init_b) = ([d for d, _ in take(n)] for n in (a, b))
    assert kinds([a_old, init_a, b_old, init_b]) == [MESSAGE_TRANSPORT, MESSAGE_INITIATION] * 2

    b.device.receive((init_a,), a.endpoint, now)
    a.device.receive((init_b,), b.endpoint, now)
    second_to_b, second_to_a = a.packet_to(b, b"A 2"), b.packet_to(a, b"B 2")
    a.device.send((second_to_b,), now)
    b.device.send((second_to_a,), now)
    (response_to_b, a_old_2), (response_to_a, b_old_2) = ([d for d, _ in take(n)] for n in (a, b))
    assert kinds([response_to_b, a_old_2]) == [MESSAGE_RESPONSE, MESSAGE_TRANSPORT]
    a.device.receive((response_to_a,), b.endpoint, now)
    b.device.receive((response_to_b,), a.endpoint, now)
    for datagram in (b_old, b_old_2):
        a.device.receive((datagram,), b.endpoint, now)
    for datagram in (a_old, a_old_2):
        b.device.receive((datagram,), a.endpoint, now)
    exchange(a, b, now)
    third_to_b, third_to_a = a.packet_to(b, b"A 3"), b.packet_to(a, b"B 3")
    a.device.send((third_to_b,), now + 1)
    b.device.send((third_to_a,), now + 1)
    exchange(a, b, now + 1)

    assert a.to_tun == [first_to_a, second_to_a, third_to_a]
    assert b.to_tun == [first_to_b, second_to_b, third_to_b]
    assert drops(a) == drops(b) == {}


def test_a_keypair_pushed_out_by_a_rotation_is_accepted_only_for_retired_keypair_s() -> None:
    a, b = _both_initiators()
    old_session = current_keypair(a, b)
    now = NOW + REKEY_AFTER_TIME_S + 1
    a.device.send((a.packet_to(b, b"rekey A"),), now)
    b.device.send((b.packet_to(a, b"rekey B"),), now)
    exchange(a, b, now)
    assert current_keypair(a, b) is not old_session
    b.to_tun.clear()
    late, too_late = (seal(old_session, a.packet_to(b, text)) for text in (b"late", b"too late"))

    b.device.receive((late,), a.endpoint, now + RETIRED_KEYPAIR_S - 0.1)
    b.device.handle_timer(now + RETIRED_KEYPAIR_S)
    b.device.receive((too_late,), a.endpoint, now + RETIRED_KEYPAIR_S)

    assert b.to_tun == [a.packet_to(b, b"late")]
    assert drops(b) == {DropReason.UNKNOWN_INDEX: 1}
    assert peer_of(b, a).retired == deque() and peer_of(b, a).timers.forget_retired is None


@pytest.mark.parametrize(("echo_type", "waits"), [(ICMP_ECHO_REPLY, False), (ICMP_ECHO, True)])
def test_a_lone_echo_reply_waits_for_no_answer_an_echo_request_does(
    established: tuple[Node, Node], echo_type: int, waits: bool
) -> None:
    """Each side's path check is an echo: if the other kernel's reply counted as data
    waiting for an answer, it would start that side's check, and so on for as long as
    the peers are idle."""
    a, b = established
    b.device.send((b.packet_to(a, b"an answer"),), NOW)
    deliver(b, a, NOW)
    assert peer_of(a, b).unanswered_since_s is None
    now = NOW + 1
    echo = bytearray(echo_request_packet(a.v4, b.v4, 1))
    echo[20] = echo_type

    a.device.send((bytes(echo),), now)

    assert (peer_of(a, b).unanswered_since_s == now) is waits


def test_the_port_policy_drops_and_counts_what_it_refuses(established: tuple[Node, Node]) -> None:
    a, b = established
    policy, _ = parse_policy("default deny\nallow * 8080/tcp\n", "test")
    identity = PeerIdentity("a", (), same_network=False)
    b.device.set_packet_filter(a.device.public_key, packet_filter(policy, identity))

    def syn(port: int) -> bytes:
        header = ipv4_packet(a.v4, b.v4, bytes(20))
        packet = bytearray(header)
        packet[9] = 6
        packet[22:24] = port.to_bytes(2, "big")
        packet[32] = 0x50
        packet[33] = 0x02
        return bytes(packet)

    for port in (22, 8080):
        a.device.send((syn(port),), NOW + 1)
    deliver(a, b, NOW + 1)

    assert [bytes(p) for p in b.to_tun] == [syn(8080)]
    assert drops(b) == {DropReason.POLICY_DENIED: 1}
    assert peer_of(b, a).policy_denied == 1
