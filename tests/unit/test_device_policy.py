"""The port policy on every receive path of the device (one packet at a time, a batch
of rows at once) and on the send path that opens UDP answer windows: each judges a
packet as the filter does (issue 22: extension headers, fragments)."""

import pytest
from conftest import NOW, Node, deliver, ipv4_packet, peer_of
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.packet import Packet
from test_device_batch import delivered, drops, established_pair
from test_device_segments import count_fallbacks, one_receive, receive, sealed_rows

from pilotif.node.policy import PeerIdentity, packet_filter, parse_policy
from pilotif.wg.drops import DropReason

DENIED, ALLOWED = 22, 8080
FRAGMENT_ROWS = 6
FRAGMENT_PAYLOAD_BYTES = 200
_TCP_FLAGS_AT = 33
_ACK = 0x10


def _with_policy(node: Node, other: Node, text: str) -> None:
    """Give `node` a policy for what `other` sends it."""
    compiled = packet_filter(parse_policy(text, "test")[0], PeerIdentity("a", (), False))
    node.device.set_packet_filter(other.device.public_key, compiled)


def _v6(source: Node, destination: Node, *layers: Packet) -> bytes:
    packet: Packet = IPv6(src=str(source.v6), dst=str(destination.v6))
    for layer in layers:
        packet = packet / layer
    return bytes(packet)


def test_a_syn_behind_a_destination_options_header_to_a_denied_port_is_dropped_and_counted() -> (
    None
):
    a, b = established_pair()
    _with_policy(b, a, f"default allow\ndeny * {DENIED}/tcp\n")
    denied = _v6(a, b, IPv6ExtHdrDestOpt(), TCP(dport=DENIED, flags="S"))
    allowed = _v6(a, b, IPv6ExtHdrDestOpt(), TCP(dport=ALLOWED, flags="S"))

    for packet in (denied, allowed):
        a.device.send((packet,), NOW + 1)
    deliver(a, b, NOW + 1)

    assert delivered(b) == [allowed]
    assert drops(b) == {DropReason.POLICY_DENIED: 1}
    assert peer_of(b, a).policy_denied == 1


def _later_fragments(a: Node, b: Node) -> list[bytes]:
    """IPv4 fragments after the first (offset 185 words), whose payload has an ACK where
    a TCP header's flags would be: what a batch check reading fixed offsets passes."""
    rows = []
    for _ in range(FRAGMENT_ROWS):
        packet = bytearray(ipv4_packet(a.v4, b.v4, bytes(FRAGMENT_PAYLOAD_BYTES)))
        packet[6:8] = (185).to_bytes(2, "big")
        packet[9] = 6
        packet[_TCP_FLAGS_AT] = _ACK
        rows.append(bytes(packet))
    return rows


def test_a_batch_of_later_fragments_without_their_first_is_dropped_row_by_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = established_pair()
    _with_policy(b, a, f"default allow\ndeny * {DENIED}/tcp\n")
    fallbacks = count_fallbacks(b, monkeypatch)

    arrived = receive(b, [one_receive(sealed_rows(a, b, _later_fragments(a, b)))], a.endpoint)

    assert fallbacks == []  # the batch path itself judged them
    assert arrived == []
    assert drops(b) == {DropReason.FRAGMENT_UNMATCHED: FRAGMENT_ROWS}


def test_a_batch_of_later_fragments_passes_without_a_policy() -> None:
    a, b = established_pair()
    rows = _later_fragments(a, b)

    assert receive(b, [one_receive(sealed_rows(a, b, rows))], a.endpoint) == rows


def test_answers_to_udp_we_sent_in_ipv6_fragments_pass_a_default_deny_policy() -> None:
    a, b = established_pair()
    _with_policy(b, a, "default deny\n")
    question = _v6(b, a, IPv6ExtHdrFragment(offset=0, m=1, id=5), UDP(sport=5353, dport=53))
    answer = _v6(a, b, UDP(sport=53, dport=5353))
    unasked = _v6(a, b, UDP(sport=54, dport=5353))

    b.device.send([question], NOW + 1, memoryview(bytearray(4096)))
    deliver(b, a, NOW + 1)
    for packet in (answer, unasked):
        a.device.send((packet,), NOW + 2)
    deliver(a, b, NOW + 2)

    assert delivered(b) == [answer]
    assert drops(b) == {DropReason.POLICY_DENIED: 1}
