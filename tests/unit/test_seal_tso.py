"""Device.send of a TCP (or UDP) super-packet from the TUN, cut and sealed in one native call
(`seal_tso`), must put on the wire exactly what cutting it (`cut_segments`) and sealing
the run (`send` of the packets) does: the same datagrams byte for byte, the same counters
and byte counts; the peer must get back exactly the segments. What the native loop
declines the device cuts and sends as that run; a super-packet its headers do not
describe is dropped as not IP, touching nothing.

These need the native loops (CI builds them; install.sh installs the compiler): the
pure-Python run of the data-plane tests, which leaves this file out, covers the decline
without them (test_device_batch.py).
"""

import struct

import pytest
from conftest import NOW, Node, current_keypair, peer_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw
from test_device_batch import (
    SEALED_BYTES,
    batch_receive,
    batch_send,
    delivered,
    drops,
    established_pair,
    sealed_buffer,
    take_bytes,
)
from test_offload import MSS_V4, MSS_V6, checksums_are_valid, split, tcp_super_packet

from pilotif.node.policy import PeerIdentity, packet_filter, parse_policy
from pilotif.packet.segments import MAX_GSO_SEGMENTS, SuperPacket
from pilotif.tun.offload import GSO_UDP_L4, VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr
from pilotif.wg.constants import REJECT_AFTER_MESSAGES
from pilotif.wg.drops import DropReason

FLAGS = ["A", "PA", "FPA", "CPA", "CEA"]
"""TCP flags of the super-packet: PSH and FIN go to the last segment, CWR to the first."""


def super_packet(
    size: int, *, v6: bool = False, flags: str = "PA", gso_size: int | None = None
) -> tuple[bytearray, VirtioNetHdr]:
    """A's super-packet of `size` payload bytes to B (addresses of conftest's A and B)."""
    raw, header = tcp_super_packet(bytes((i * 7) % 251 for i in range(size)), v6=v6, flags=flags)
    if gso_size is not None:
        header = VirtioNetHdr(
            header.flags,
            header.gso_type,
            header.hdr_len,
            gso_size,
            header.csum_start,
            header.csum_offset,
        )
    return raw, header


def send_super(node: Node, raw: bytearray, header: VirtioNetHdr, size: int = SEALED_BYTES) -> bool:
    """Hand the super-packet to the device; whether it went as one native train."""
    batch = SuperPacket(memoryview(raw), header.csum_start, header.gso_size)
    node.device.send(batch, NOW, sealed_buffer(size))
    return bool(node.trains)


def train_datagrams(node: Node) -> list[bytes]:
    """The datagrams of every train the node queued, cut at each train's size; empties
    the queue."""
    datagrams = []
    for train, size, _ in node.trains:
        datagrams += [bytes(train[i : i + size]) for i in range(0, len(train), size)]
    node.trains.clear()
    return datagrams


def cut_and_sent(a: Node, b: Node, raw: bytearray, header: VirtioNetHdr) -> list[bytes]:
    """What the other pipeline sends for the same super-packet: cut, then sealed as a run."""
    batch_send(a, split(raw, header))
    return [datagram for datagram, _ in take_bytes(a)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(min_value=1, max_value=64000),
    v6=st.booleans(),
    flags=st.sampled_from(FLAGS),
    odd_mss=st.integers(min_value=0, max_value=1),
)
def test_a_super_packet_goes_out_exactly_as_cut_and_sealed(
    size: int, v6: bool, flags: str, odd_mss: int
) -> None:
    a, b = established_pair()
    gso_size = (MSS_V6 if v6 else MSS_V4) - odd_mss
    raw, header = super_packet(size, v6=v6, flags=flags, gso_size=gso_size)
    keypair = current_keypair(a, b)
    first = keypair.send_counter
    tx_before = peer_of(a, b).tx_bytes

    assert send_super(a, raw, header)
    assert not a.outgoing
    (_train, datagram_size, endpoint), *more = a.trains
    assert not more and endpoint == b.endpoint
    native = train_datagrams(a)
    after, tx_after = keypair.send_counter, peer_of(a, b).tx_bytes

    keypair.send_counter = first
    expected = cut_and_sent(a, b, raw, header)
    assert native == expected
    assert all(len(datagram) == datagram_size for datagram in expected[:-1])
    assert len(expected[-1]) <= datagram_size
    assert keypair.send_counter == after == first + len(expected)
    assert tx_after - tx_before == peer_of(a, b).tx_bytes - tx_after


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_peer_gets_back_exactly_the_segments(v6: bool) -> None:
    a, b = established_pair()
    raw, header = super_packet(60000, v6=v6, flags="FPA")
    assert send_super(a, raw, header)
    batch_receive(b, train_datagrams(a), a.endpoint)
    assert delivered(b) == split(raw, header)
    assert not drops(b)


def test_counters_run_on_across_super_packets_and_never_repeat() -> None:
    a, _b = established_pair()
    counters: list[int] = []
    for size in (30000, 1, 64000):
        raw, header = super_packet(size)
        assert send_super(a, raw, header)
        counters += [struct.unpack_from("<Q", d, 8)[0] for d in train_datagrams(a)]
    assert counters == list(range(counters[0], counters[0] + len(counters)))


def _with(header: VirtioNetHdr, **changes: int) -> VirtioNetHdr:
    fields = {
        "flags": header.flags,
        "gso_type": header.gso_type,
        "hdr_len": header.hdr_len,
        "gso_size": header.gso_size,
        "csum_start": header.csum_start,
        "csum_offset": header.csum_offset,
    }
    return VirtioNetHdr(**(fields | changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"csum_start": 10},
        {"csum_start": 60000},
        {"gso_size": 0},
        {"gso_size": 100},
        {"gso_size": 1400},
    ],
    ids=["transport-inside-ip", "transport-past-end", "no-size", "too-many-segments", "past-mtu"],
)
def test_a_header_that_does_not_describe_the_packet_is_declined(changes: dict[str, int]) -> None:
    a, b = established_pair()
    raw, header = super_packet(60000)
    counter = current_keypair(a, b).send_counter
    changed = _with(header, **changes)
    assert not send_super(a, raw, changed)
    if "gso_size" in changes and changes["gso_size"] > MSS_V4:
        # Segments past the MTU: declined natively, cut and sent as a run.
        sent = [datagram for datagram, _ in take_bytes(a)]
        current_keypair(a, b).send_counter = counter
        assert sent == cut_and_sent(a, b, raw, changed)
        return
    assert not a.trains and not a.outgoing
    assert drops(a) == {DropReason.NOT_IP: 1}
    assert current_keypair(a, b).send_counter == counter


def test_garbage_is_declined() -> None:
    a, b = established_pair()
    raw = bytearray(b"\x45" + bytes(range(200)))
    raw[16:20] = b.v4.packed
    a.device.send(SuperPacket(memoryview(raw), 20, 1000), NOW, sealed_buffer())
    a.device.send(SuperPacket(memoryview(bytearray(3)), 20, 1000), NOW, sealed_buffer())
    assert not a.trains and not a.outgoing
    assert drops(a) == {DropReason.NOT_IP: 2}


def test_too_small_a_buffer_is_declined() -> None:
    a, b = established_pair()
    raw, header = super_packet(60000)
    counter = current_keypair(a, b).send_counter
    assert not send_super(a, raw, header, size=20000)
    sent = [datagram for datagram, _ in take_bytes(a)]
    current_keypair(a, b).send_counter = counter
    assert sent == cut_and_sent(a, b, raw, header)


def test_without_a_session_or_near_the_message_limit_it_is_declined() -> None:
    a, b = established_pair()
    raw, header = super_packet(5000)
    keypair = current_keypair(a, b)
    near_limit = REJECT_AFTER_MESSAGES - MAX_GSO_SEGMENTS
    keypair.send_counter = near_limit
    assert not send_super(a, raw, header)
    sent = [datagram for datagram, _ in take_bytes(a)]
    keypair.send_counter = near_limit
    assert sent == cut_and_sent(a, b, raw, header)

    peer_of(a, b).current = None
    keypair.send_counter = 0
    assert not send_super(a, raw, header)
    assert not a.trains
    assert [bytes(packet) for packet in peer_of(a, b).staged] == split(raw, header)


def udp_super_packet(
    a: Node, b: Node, size: int, gso_size: int, *, v6: bool = False
) -> tuple[bytearray, VirtioNetHdr]:
    """A's UDP super-packet to B (USO): the headers once, then `size` payload bytes."""
    payload = bytes((i * 11) % 253 for i in range(size))
    ip: Packet = IPv6(src=str(a.v6), dst=str(b.v6)) if v6 else IP(src=str(a.v4), dst=str(b.v4))
    raw = bytearray(bytes(ip / UDP(sport=4433, dport=443) / Raw(payload)))
    ip_len = 40 if v6 else 20
    return raw, VirtioNetHdr(
        VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_UDP_L4, ip_len + 8, gso_size, ip_len, 6
    )


def send_udp_super(node: Node, raw: bytearray, header: VirtioNetHdr) -> bool:
    """Hand the UDP super-packet to the device; whether it went as one native train."""
    batch = SuperPacket(memoryview(raw), header.csum_start, header.gso_size, udp=True)
    node.device.send(batch, NOW, sealed_buffer())
    return bool(node.trains)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(min_value=1, max_value=60000),
    gso_size=st.integers(min_value=500, max_value=1392),
    v6=st.booleans(),
)
def test_a_udp_super_packet_goes_out_exactly_as_cut_and_sealed(
    size: int, gso_size: int, v6: bool
) -> None:
    # USO: the kernel hands a QUIC-like sender's datagrams glued; the native cut and
    # seal must put on the wire what cutting them in Python and sealing the run does.
    a, b = established_pair()
    gso_size = min(gso_size, 1372 if v6 else 1392)  # within the MTU, 1420
    raw, header = udp_super_packet(a, b, size, gso_size, v6=v6)
    keypair = current_keypair(a, b)
    first = keypair.send_counter

    assert send_udp_super(a, raw, header)
    native = train_datagrams(a)

    keypair.send_counter = first
    expected = cut_and_sent(a, b, raw, header)
    assert native == expected
    assert len(expected) == -(-size // gso_size)


def test_the_peer_gets_back_exactly_the_udp_datagrams() -> None:
    a, b = established_pair()
    raw, header = udp_super_packet(a, b, 40000, 1200)
    assert send_udp_super(a, raw, header)
    batch_receive(b, train_datagrams(a), a.endpoint)
    got = delivered(b)
    assert got == split(raw, header)
    assert b"".join(bytes(IP(p)[UDP].payload) for p in got) == bytes(raw[28:])
    assert all(checksums_are_valid(p) for p in got)
    assert not drops(b)


def test_the_answers_to_a_udp_super_packet_pass_a_deny_by_default_policy() -> None:
    # The segments share one flow: noting it once opens the window for its answers, as
    # sending the datagrams one by one does.
    a, b = established_pair()
    policy, _ = parse_policy("default deny\n", "test")
    peer = peer_of(a, b)
    peer.packet_filter = packet_filter(policy, PeerIdentity("b", (), same_network=False))
    answer = bytes(IP(src=str(b.v4), dst=str(a.v4)) / UDP(sport=443, dport=4433) / Raw(b"x"))
    assert peer.packet_filter is not None
    assert peer.packet_filter.judge(answer, NOW) is not None

    raw, header = udp_super_packet(a, b, 5000, 1200)
    assert send_udp_super(a, raw, header)

    assert peer.packet_filter.judge(answer, NOW + 1) is None
