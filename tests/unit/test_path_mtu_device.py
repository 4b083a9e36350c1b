"""The device's side of path MTU (pilotif.wg.path_mtu): probes of an exact size that
the peer answers, each peer's MTU kept (what does not fit is dropped and its sender told
with an ICMP "fragmentation needed" / "packet too big"), and hostile probes.
"""

import struct

from conftest import NOW, Node, peer_of
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.packet import Raw
from test_device_batch import (
    batch_receive,
    batch_send,
    drops,
    established_pair,
    take_bytes,
    tcp_segment,
)
from test_offload import checksums_are_valid

from pilotif.packet.segments import SuperPacket
from pilotif.wg.drops import DropReason
from pilotif.wg.events import PathProbeAcked
from pilotif.wg.path_mtu import MESSAGE, PROBE, TOO_BIG_INTERVAL_S

TRANSPORT_OVERHEAD = 32
"""Header (16) and tag (16) of a transport message around its plaintext."""


def carry(sender: Node, receiver: Node, now: float = NOW) -> list[bytes]:
    """Hand the sender's datagrams to the receiver; the datagrams, copied."""
    datagrams = [datagram for datagram, _ in take_bytes(sender)]
    batch_receive(receiver, datagrams, sender.endpoint, now)
    return datagrams


def test_a_probe_is_exactly_its_size_on_the_wire_and_its_answer_is_reported() -> None:
    a, b = established_pair()

    assert a.device.send_path_probe(b.device.public_key, 7, 1300, NOW)
    (probe,) = carry(a, b)
    (answer,) = carry(b, a)

    assert len(probe) == TRANSPORT_OVERHEAD + 1300
    assert len(answer) < 64
    assert a.events == [PathProbeAcked(b.device.public_key, 7, 1300)]
    assert not a.to_tun and not b.to_tun
    assert not drops(a) and not drops(b)


def test_no_probe_without_a_session() -> None:
    a, b = established_pair()
    peer_of(a, b).current = None
    assert not a.device.send_path_probe(b.device.public_key, 1, 1300, NOW)
    assert not a.device.send_path_probe(b"\x01" * 32, 1, 1300, NOW)
    assert not take_bytes(a)


def test_a_probe_whose_size_is_not_its_length_or_a_truncated_one_gets_no_answer() -> None:
    a, b = established_pair()
    keypair = peer_of(a, b).current
    assert keypair is not None
    keepalives = a.device._keepalives
    lying = MESSAGE.pack(PROBE, 1, 1400) + bytes(100)
    keepalives.send_with(peer_of(a, b), keypair, NOW, plaintext=lying)
    keepalives.send_with(peer_of(a, b), keypair, NOW, plaintext=bytes([PROBE, 0, 0]))
    carry(a, b)

    assert not take_bytes(b)
    assert drops(b) == {DropReason.NOT_IP: 1}


def test_a_replayed_probe_is_answered_once() -> None:
    a, b = established_pair()
    assert a.device.send_path_probe(b.device.public_key, 3, 1200, NOW)
    (probe,) = [datagram for datagram, _ in take_bytes(a)]
    batch_receive(b, [probe, probe], a.endpoint)
    assert len(take_bytes(b)) == 1
    assert drops(b) == {DropReason.REPLAY: 1}


def test_packets_larger_than_the_peers_mtu_are_dropped_and_their_sender_told() -> None:
    a, b = established_pair()
    a.device.set_peer_mtu(b.device.public_key, 1200)
    small = a.packet_to(b, bytes(1200 - 28))
    large = a.packet_to(b, bytes(1300 - 28))

    batch_send(a, [small, large, large])

    (sent,) = carry(a, b)
    assert len(sent) <= TRANSPORT_OVERHEAD + 1200
    assert [bytes(p) for p in b.to_tun] == [small]
    (told,) = [bytes(p) for p in a.to_tun]
    icmp = IP(told)
    assert (icmp.src, icmp.dst) == (str(b.v4), str(a.v4))
    assert (icmp[ICMP].type, icmp[ICMP].code, icmp[ICMP].nexthopmtu) == (3, 4, 1200)
    assert bytes(icmp[ICMP].payload)[:28] == large[:28]
    assert drops(a) == {DropReason.PACKET_TOO_BIG: 2}


def test_the_sender_is_told_again_only_after_an_interval() -> None:
    a, b = established_pair()
    a.device.set_peer_mtu(b.device.public_key, 1200)
    large = a.packet_to(b, bytes(1300))
    for now in (NOW, NOW + TOO_BIG_INTERVAL_S / 2, NOW + TOO_BIG_INTERVAL_S * 1.5):
        a.device.send([large], now, None)
    assert len(a.to_tun) == 2


def test_padding_stays_inside_the_peers_mtu() -> None:
    # WireGuard pads to 16 bytes, but never past the MTU: here the peer's.
    a, b = established_pair()
    a.device.set_peer_mtu(b.device.public_key, 1219)
    batch_send(a, [a.packet_to(b, bytes(1218 - 20))])
    (sent,) = carry(a, b)
    assert len(sent) == TRANSPORT_OVERHEAD + 1219


def test_an_ipv6_sender_is_told_packet_too_big_no_lower_than_ipv6_allows() -> None:
    a, b = established_pair()
    a.device.set_peer_mtu(b.device.public_key, 1220)
    large = bytes(IPv6(src=str(a.v6), dst=str(b.v6)) / UDP(sport=1, dport=2) / Raw(bytes(1300)))
    batch_send(a, [large])
    (told,) = [IPv6(bytes(p)) for p in a.to_tun]
    assert told[ICMPv6PacketTooBig].mtu == 1280
    assert (told.src, told.dst) == (str(b.v6), str(a.v6))


def test_a_super_packet_cut_too_large_for_the_peer_is_dropped_and_its_sender_told() -> None:
    a, b = established_pair()
    a.device.set_peer_mtu(b.device.public_key, 1200)
    segment = tcp_segment(a, b, 0)  # an MSS-sized segment: larger than 1200
    raw = bytearray(segment[:40] + bytes(3 * (len(segment) - 40)))
    struct.pack_into("!H", raw, 2, len(raw))
    a.device.send(
        SuperPacket(memoryview(raw), 20, len(segment) - 40), NOW, memoryview(bytearray(65536))
    )
    assert not a.trains and not take_bytes(a)
    (told,) = [IP(bytes(p)) for p in a.to_tun]
    assert told[ICMP].nexthopmtu == 1200
    quoted = bytes(told[ICMP].payload)
    assert quoted[12:20] == raw[12:20] and quoted[20:24] == raw[20:24]  # addresses, ports
    assert drops(a) == {DropReason.PACKET_TOO_BIG: 3}


def test_the_told_sender_gets_a_well_formed_icmp_message() -> None:
    a, b = established_pair()
    a.device.set_peer_mtu(b.device.public_key, 1000)
    batch_send(a, [tcp_segment(a, b, 0)])
    (told,) = [bytes(p) for p in a.to_tun]
    packet = IP(told)
    carried = (packet.chksum, packet[ICMP].chksum)
    del packet.chksum, packet[ICMP].chksum
    rebuilt = IP(bytes(packet))
    assert carried == (rebuilt.chksum, rebuilt[ICMP].chksum)
    assert len(told) <= 576


def test_without_a_peer_mtu_nothing_changes() -> None:
    a, b = established_pair()
    a.device.set_peer_mtu(b.device.public_key, 1200)
    a.device.set_peer_mtu(b.device.public_key, None)
    segment = tcp_segment(a, b, 0)
    batch_send(a, [segment])
    carry(a, b)
    assert [bytes(p) for p in b.to_tun] == [segment]
    assert checksums_are_valid(segment)
