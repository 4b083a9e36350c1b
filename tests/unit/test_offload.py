"""TUN offloads without a TUN: splitting TSO super-packets, coalescing segments (GRO,
the native `coalesce` and `coalesce_rows`).

Super-packets are built the way the kernel hands them over (one IP and TCP header, a
long payload, the TCP checksum field holding only the pseudo-header sum); every
segment is checked with scapy, which recomputes the checksums independently.
"""

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from pilotif.packet.checksum import internet_checksum
from pilotif.tun.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_IP_PACKET_BYTES,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_SIZE,
    OffloadError,
    VirtioNetHdr,
    split_gso,
)
from pilotif.wg.fastpath import _batch_loops  # type: ignore[attr-defined]

coalesce = _batch_loops.coalesce
"""The merge of TUN writes: native only (without it every packet is written as it is)."""

MSS_V4 = 1368
MSS_V6 = 1348
TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
SEQ_NEAR_WRAP = 2**32 - 5000


def tcp_super_packet(
    payload: bytes, *, v6: bool = False, flags: str = "PA", seq: int = SEQ_NEAR_WRAP
) -> tuple[bytearray, VirtioNetHdr]:
    """A TSO super-packet as a TUN read returns it after the virtio header."""
    if v6:
        ip: Packet = IPv6(src="fd00:64::1", dst="fd00:64::2", hlim=64)
        gso_type, gso_size = GSO_TCPV6, MSS_V6
    else:
        ip = IP(src="100.64.0.1", dst="100.64.0.2", id=7, flags="DF")
        gso_type, gso_size = GSO_TCPV4, MSS_V4
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, options=TIMESTAMPS)
    raw = bytearray(bytes(ip / tcp / Raw(payload)))
    ip_len = 40 if v6 else 20
    _set_partial_checksum(raw, ip_len, v6=v6)
    header = VirtioNetHdr(
        flags=VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type=gso_type,
        hdr_len=ip_len + 32,
        gso_size=gso_size,
        csum_start=ip_len,
        csum_offset=16,
    )
    return raw, header


def _set_partial_checksum(raw: bytearray, ip_len: int, *, v6: bool) -> None:
    """Put only the pseudo-header sum (not complemented) in the TCP checksum field."""
    addresses = bytes(raw[8:40]) if v6 else bytes(raw[12:20])
    pseudo = addresses + struct.pack("!HH", 6, len(raw) - ip_len)
    partial = 0xFFFF - internet_checksum(pseudo)
    struct.pack_into("!H", raw, ip_len + 16, partial)


def checksums_are_valid(segment: bytes) -> bool:
    """Scapy's own checksums of the segment match the ones it carries."""
    packet = IP(segment) if segment[0] >> 4 == 4 else IPv6(segment)
    layer = packet[TCP] if TCP in packet else packet[UDP]
    carried = (packet.chksum if IP in packet else None, layer.chksum)
    if IP in packet:
        del packet[IP].chksum
    del layer.chksum
    rebuilt = IP(bytes(packet)) if IP in packet else IPv6(bytes(packet))
    fresh_layer = rebuilt[TCP] if TCP in rebuilt else rebuilt[UDP]
    return carried == (rebuilt.chksum if IP in rebuilt else None, fresh_layer.chksum)


def split(raw: bytearray, header: VirtioNetHdr) -> list[bytes]:
    out = bytearray(2 * MAX_IP_PACKET_BYTES)
    return [bytes(s) for s in split_gso(memoryview(raw), header, out)]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tso_super_packet_splits_into_valid_mtu_segments(v6: bool) -> None:
    payload = os.urandom(60000)
    raw, header = tcp_super_packet(payload, v6=v6)
    segments = split(raw, header)
    mss = MSS_V6 if v6 else MSS_V4
    assert len(segments) == -(-len(payload) // mss)
    assert all(len(s) <= 1420 for s in segments)
    assert all(checksums_are_valid(s) for s in segments)
    parsed = [IPv6(s) if v6 else IP(s) for s in segments]
    assert b"".join(bytes(p[TCP].payload) for p in parsed) == payload
    assert [p[TCP].seq for p in parsed] == [
        (SEQ_NEAR_WRAP + i * mss) % 2**32 for i in range(len(parsed))
    ]
    assert all(p[TCP].options == parsed[0][TCP].options for p in parsed)


def test_ipv4_segments_get_consecutive_ids_and_their_own_length() -> None:
    raw, header = tcp_super_packet(os.urandom(5000))
    parsed = [IP(s) for s in split(raw, header)]
    assert [p.id for p in parsed] == [7, 8, 9, 10]
    assert [p.len for p in parsed] == [len(bytes(p)) for p in parsed]


def test_psh_and_fin_only_on_the_last_segment() -> None:
    raw, header = tcp_super_packet(os.urandom(4000), flags="FPA")
    flags = [str(IP(s)[TCP].flags) for s in split(raw, header)]
    assert flags == ["A", "A", "FPA"]


def test_cwr_only_on_the_first_segment() -> None:
    raw, header = tcp_super_packet(os.urandom(4000), flags="AC")
    flags = [str(IP(s)[TCP].flags) for s in split(raw, header)]
    assert flags == ["AC", "A", "A"]


def test_udp_super_packet_splits_with_its_own_lengths() -> None:
    payload = os.urandom(3000)
    raw = bytearray(
        bytes(IP(src="100.64.0.1", dst="100.64.0.2") / UDP(sport=1, dport=2) / Raw(payload))
    )
    header = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_UDP_L4, 28, 1000, 20, 6)
    segments = split(raw, header)
    assert [IP(s)[UDP].len for s in segments] == [1008, 1008, 1008]
    assert all(checksums_are_valid(s) for s in segments)
    assert b"".join(bytes(IP(s)[UDP].payload) for s in segments) == payload


def test_partial_checksum_of_a_single_packet_is_completed() -> None:
    raw, _ = tcp_super_packet(b"hello")
    header = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16)
    (packet,) = split(raw, header)
    assert checksums_are_valid(packet)


def test_header_that_does_not_describe_the_packet_raises() -> None:
    raw, header = tcp_super_packet(os.urandom(2000))
    bad = VirtioNetHdr(header.flags, 2, header.hdr_len, header.gso_size, 20, 16)
    with pytest.raises(OffloadError):
        split(raw, bad)
    with pytest.raises(OffloadError):
        split(bytearray(raw[:30]), header)


def test_virtio_header_packs_and_parses_back() -> None:
    header = VirtioNetHdr(1, GSO_TCPV6, 72, 1348, 40, 16)
    buffer = bytearray(VIRTIO_NET_HDR_SIZE)
    header.pack_into(buffer)
    assert VirtioNetHdr.unpack_from(buffer) == header
    assert buffer[:2] == b"\x01\x04"


def test_internet_checksum_matches_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert internet_checksum(b"\x01") == 0xFEFF


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_segments_coalesce_back_into_one_super_packet(v6: bool) -> None:
    payload = os.urandom(40000)
    raw, header = tcp_super_packet(payload, v6=v6)
    segments = split(raw, header)
    (write,) = coalesce(segments)
    written = VirtioNetHdr.unpack_from(write)
    assert written.gso_type == (GSO_TCPV6 if v6 else GSO_TCPV4)
    assert written.gso_size == header.gso_size
    assert written.flags == VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert (written.csum_start, written.csum_offset) == (header.csum_start, 16)
    packet = bytearray(write[VIRTIO_NET_HDR_SIZE:])
    assert len(packet) == len(raw)
    # What the kernel will do with it: split it again. The result is the same segments.
    assert split(packet, written) == segments


def test_coalesced_super_packet_carries_the_pseudo_header_sum() -> None:
    raw, header = tcp_super_packet(os.urandom(3000))
    (write,) = coalesce(split(raw, header))
    assert bytes(write[VIRTIO_NET_HDR_SIZE:]) == bytes(raw)


def test_non_tcp_and_single_segments_pass_through_behind_a_zero_header() -> None:
    udp = bytes(IP(src="100.64.0.1", dst="100.64.0.2") / UDP(sport=1, dport=2) / Raw(b"x" * 100))
    raw, header = tcp_super_packet(os.urandom(500))
    (single,) = split(raw, header)
    writes = coalesce([udp, single])
    assert [bytes(w) for w in writes] == [bytes(10) + udp, bytes(10) + single]


def test_flows_are_kept_apart_and_in_first_packet_order() -> None:
    a = split(*tcp_super_packet(os.urandom(4000)))
    b_raw, b_header = tcp_super_packet(os.urandom(4000), seq=1)
    b_raw[21] ^= 1  # another source port
    _set_partial_checksum(b_raw, 20, v6=False)
    b = split(b_raw, b_header)
    writes = coalesce([a[0], b[0], a[1], b[1], a[2], b[2]])
    assert len(writes) == 2
    assert [IP(bytes(w[10:]))[TCP].sport for w in writes] == [40000, 40001]


def test_gap_in_sequence_starts_a_new_super_packet() -> None:
    segments = split(*tcp_super_packet(os.urandom(6000)))
    writes = coalesce([segments[0], segments[1], segments[3], segments[4]])
    assert [VirtioNetHdr.unpack_from(w).gso_type for w in writes] == [GSO_TCPV4, GSO_TCPV4]


def test_segment_after_psh_is_not_merged() -> None:
    first = split(*tcp_super_packet(os.urandom(2000), seq=1000))
    second = split(*tcp_super_packet(os.urandom(2000), seq=3000))
    writes = coalesce(first + second)
    assert len(writes) == 2
    assert str(IP(bytes(writes[0][10:]))[TCP].flags) == "PA"


def test_a_packet_that_does_not_join_its_connections_run_ends_it() -> None:
    # A pure ACK of the same connection between segments: the segments after it are not
    # merged into the write before it (a connection's packets keep their order).
    segments = split(*tcp_super_packet(os.urandom(6000), flags="A"))
    ack = IP(segments[0])
    ack[TCP].remove_payload()
    del ack[IP].len, ack[IP].chksum, ack[TCP].chksum
    pure_ack = bytes(ack)
    batch = [*segments[:2], pure_ack, *segments[2:]]
    writes = coalesce(batch)
    assert len(writes) == 3
    assert bytes(writes[1]) == bytes(10) + pure_ack
    assert [_without_ipv4_id(p) for p in _writes_as_packets(writes)] == [
        _without_ipv4_id(p) for p in batch
    ]


def test_packets_too_long_for_ip_are_refused() -> None:
    with pytest.raises(ValueError, match="longer"):
        coalesce([bytes(65536)])


def test_garbage_and_truncated_packets_are_written_as_they_are() -> None:
    segments = split(*tcp_super_packet(os.urandom(3000), flags="A"))
    garbage = [b"", b"\x45", os.urandom(30), segments[1][:30], b"\x60" + bytes(59)]
    # Nothing among them is of the segments' connection: its run goes on after them.
    writes = coalesce([segments[0], *garbage, segments[1], segments[2]])
    assert [bytes(w) for w in writes[1:]] == [bytes(10) + g for g in garbage]
    assert [_without_ipv4_id(p) for p in _writes_as_packets(writes[:1])] == [
        _without_ipv4_id(s) for s in segments
    ]


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=62000),
    seq=st.integers(min_value=0, max_value=2**32 - 1),
    v6=st.booleans(),
)
def test_split_then_coalesce_round_trips(size: int, seq: int, v6: bool) -> None:
    payload = os.urandom(size)
    raw, header = tcp_super_packet(payload, v6=v6, seq=seq)
    segments = split(raw, header)
    assert all(checksums_are_valid(s) for s in segments[:3] + segments[-1:])
    writes = coalesce(segments)
    assert len(writes) == 1
    if len(segments) > 1:
        assert bytes(writes[0][VIRTIO_NET_HDR_SIZE:]) == bytes(raw)


def _transport_checksum_ok(segment: bytes, v6: bool, protocol: int) -> bool:
    """The ones' complement sum over pseudo-header and transport bytes is zero (either
    representation of the checksum, 0x0000 or 0xFFFF, is accepted by a receiver)."""
    ip_len = 40 if v6 else 20
    addresses = segment[8:40] if v6 else segment[12:20]
    transport = segment[ip_len:]
    pseudo = addresses + struct.pack("!HH", protocol, len(transport))
    return internet_checksum(pseudo + transport) == 0


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=30000),
    gso_size=st.integers(min_value=1, max_value=1400),
    kind=st.sampled_from(["tcp4", "tcp6", "udp4"]),
)
def test_any_segment_size_splits_into_valid_segments(size: int, gso_size: int, kind: str) -> None:
    # Odd segment sizes and short last segments included: every segment is a complete,
    # valid packet and together they carry the payload, in order.
    size = min(size, gso_size * 100)
    payload = os.urandom(size)
    v6 = kind == "tcp6"
    if kind == "udp4":
        raw = bytearray(
            bytes(IP(src="100.64.0.1", dst="100.64.0.2") / UDP(sport=1, dport=2) / Raw(payload))
        )
        header = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_UDP_L4, 28, gso_size, 20, 6)
        protocol, header_len = 17, 28
    else:
        raw, header = tcp_super_packet(payload, v6=v6, flags="A")
        header = VirtioNetHdr(
            header.flags,
            header.gso_type,
            header.hdr_len,
            gso_size,
            *[header.csum_start, header.csum_offset],
        )
        protocol, header_len = 6, header.hdr_len
    segments = split(raw, header)
    assert len(segments) == -(-size // gso_size)
    assert b"".join(s[header_len:] for s in segments) == payload
    for number, segment in enumerate(segments):
        assert len(segment) - header_len == min(gso_size, size - number * gso_size)
        assert _transport_checksum_ok(segment, v6, protocol), number
        if v6:
            assert struct.unpack_from("!H", segment, 4)[0] == len(segment) - 40
        else:
            assert struct.unpack_from("!H", segment, 2)[0] == len(segment)
            assert internet_checksum(segment[:20]) == 0
        if kind != "udp4":
            expected_seq = (SEQ_NEAR_WRAP + number * gso_size) % 2**32
            assert struct.unpack_from("!I", segment, (40 if v6 else 20) + 4)[0] == expected_seq


def _writes_as_packets(writes: list[bytes]) -> list[bytes]:
    """What the kernel makes of our writes: each super-packet split again into segments."""
    packets: list[bytes] = []
    for write in writes:
        header = VirtioNetHdr.unpack_from(write)
        body = bytearray(write[VIRTIO_NET_HDR_SIZE:])
        packets += split(body, header) if header.gso_type != GSO_NONE else [bytes(body)]
    return packets


def _without_ipv4_id(packet: bytes) -> bytes:
    """The packet with its IPv4 ID and header checksum zeroed: the kernel numbers the
    segments of a super-packet itself (our inputs are DF packets, whose ID means nothing)."""
    if packet[0] >> 4 != 4:
        return packet
    return packet[:4] + bytes(2) + packet[6:10] + bytes(2) + packet[12:]


def _connection(packet: bytes) -> bytes:
    """What tells a packet's TCP connection apart (its ports); other packets: themselves."""
    v6 = packet[0] >> 4 == 6
    ip_len = 40 if v6 else 20
    if (packet[6] if v6 else packet[9]) != 6:
        return packet
    return packet[ip_len : ip_len + 4]


def _by_connection(packets: list[bytes]) -> dict[bytes, list[bytes]]:
    """Each connection's packets, in order (IPv4 IDs aside)."""
    flows: dict[bytes, list[bytes]] = {}
    for packet in packets:
        flows.setdefault(_connection(packet), []).append(_without_ipv4_id(packet))
    return flows


def _cut_in_two(segment: bytes, where: int) -> list[bytes]:
    """The segment as two back to back (a short one, then the rest), when it can be."""
    packet = IPv6(segment) if segment[0] >> 4 == 6 else IP(segment)
    payload = bytes(packet[TCP].payload)
    if len(payload) < 2:
        return [segment]
    cut = 1 + where % (len(payload) - 1)
    halves = []
    for seq, part in ((packet[TCP].seq, payload[:cut]), (packet[TCP].seq + cut, payload[cut:])):
        half = packet.copy()
        half[TCP].remove_payload()
        half[TCP].seq = seq % 2**32
        del half[TCP].chksum
        if IP in half:
            del half[IP].len, half[IP].chksum
        else:
            del half[IPv6].plen
        halves.append(bytes(half / Raw(part)))
    return halves


@settings(max_examples=120, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=20000), min_size=1, max_size=3),
    order=st.lists(st.integers(min_value=0, max_value=2), max_size=200),
    change=st.sampled_from(
        ["none", "drop", "swap", "ack", "psh", "psh-last", "udp", "short", "cut", "ttl", "window"]
    ),
    where=st.integers(min_value=0, max_value=1000),
    v6=st.booleans(),
)
def test_coalescing_carries_exactly_the_packets_each_connection_in_order(
    sizes: list[int], order: list[int], change: str, where: int, v6: bool
) -> None:
    # What the native merge hands the kernel is what the plain path writes one by one:
    # split again, the same packets, each connection's in the same order; and a
    # connection's in-order run of segments becomes one write.
    flows = []
    for number, size in enumerate(sizes):
        raw, header = tcp_super_packet(os.urandom(size), v6=v6, flags="A")
        raw[(40 if v6 else 20) + 1] ^= number  # each connection its own source port
        _set_partial_checksum(raw, 40 if v6 else 20, v6=v6)
        flows.append(split(raw, header))
    batch: list[bytes] = []
    for pick in order + list(range(len(flows))) * 50:
        if flows[pick % len(flows)]:
            batch.append(flows[pick % len(flows)].pop(0))
    at = where % len(batch)
    tcp_at = 40 if v6 else 20
    if change == "drop" and len(batch) > 2:
        del batch[at]
    elif change == "swap" and len(batch) > 1:
        other = (at + 1) % len(batch)
        batch[at], batch[other] = batch[other], batch[at]
    elif change in ("ack", "psh", "psh-last", "ttl", "window"):
        at = len(batch) - 1 if change == "psh-last" else at
        packet = bytearray(batch[at])
        offset = {"ack": tcp_at + 8, "psh": tcp_at + 13, "psh-last": tcp_at + 13}.get(
            change, 7 if v6 and change == "ttl" else 8 if change == "ttl" else tcp_at + 14
        )
        packet[offset] ^= 0x08 if change.startswith("psh") else 1
        rebuilt = IPv6(bytes(packet)) if v6 else IP(bytes(packet))
        del rebuilt[TCP].chksum
        if not v6:
            del rebuilt[IP].chksum
        batch[at] = bytes(rebuilt)
    elif change == "udp":
        batch.insert(at, bytes(IP(src="100.64.0.1", dst="100.64.0.2") / UDP() / Raw(b"u")))
    elif change == "short":
        batch[at] = batch[at][:-1]
    elif change == "cut":
        batch[at : at + 1] = _cut_in_two(batch[at], where)

    writes = [bytes(w) for w in coalesce(batch)]

    assert _by_connection(_writes_as_packets(writes)) == _by_connection(batch)
    assert all(w[:10] == bytes(10) for w in writes if VirtioNetHdr.unpack_from(w).gso_type == 0)
    if change in ("none", "udp", "psh-last") and len(sizes) == 1:
        tcp_writes = [w for w in writes if VirtioNetHdr.unpack_from(w).gso_type != GSO_NONE]
        assert len(batch) - (change == "udp") == 1 or len(tcp_writes) == 1


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(min_value=2 * MSS_V4, max_value=64000),
    slack=st.integers(min_value=0, max_value=40),
    change=st.sampled_from(["none", "psh-middle", "gap", "long-header", "garbage-row"]),
    where=st.integers(min_value=0, max_value=1000),
    v6=st.booleans(),
)
def test_merging_rows_writes_what_merging_their_packets_writes(
    size: int, slack: int, change: str, where: int, v6: bool
) -> None:
    # coalesce_rows reads the packets where a decrypted batch left them, one per row
    # (the padding after each is not the packet's): the one super-packet coalesce makes
    # of the packets themselves, byte for byte, or None when a row's header claims more
    # than its row holds or coalesce does not make one super-packet of them all.
    raw, header = tcp_super_packet(os.urandom(size), v6=v6, flags="A")
    batch = [bytearray(s) for s in split(raw, header)]
    at = where % len(batch)
    flags_at = (40 if v6 else 20) + 13
    if change == "psh-middle":
        batch[at][flags_at] |= 0x08
    elif change == "gap" and len(batch) > 2:
        del batch[at]
    stride = len(batch[0]) + slack
    rows = bytearray(b"\xee" * (stride * len(batch)))
    for row, packet in enumerate(batch):
        rows[row * stride : row * stride + len(packet)] = packet
    last_size = len(batch[-1]) + min(slack, 3)
    if change == "long-header":
        # The header claims one byte more than the row holds.
        length_at, header_bytes = (4, 40) if v6 else (2, 0)
        room = stride if at < len(batch) - 1 else last_size
        field = (room + 1 - header_bytes).to_bytes(2, "big")
        rows[at * stride + length_at : at * stride + length_at + 2] = field
    elif change == "garbage-row":
        rows[at * stride : at * stride + 2] = b"\x00\x00"

    got = _batch_loops.coalesce_rows(memoryview(rows), stride, len(batch), last_size)

    if change in ("long-header", "garbage-row"):
        assert got is None
    else:
        writes = coalesce(batch)
        one = len(writes) == 1 and VirtioNetHdr.unpack_from(writes[0]).gso_type != GSO_NONE
        assert got == (writes[0] if one else None)
        if change == "none":
            assert got is not None


@pytest.mark.parametrize(
    "stride, count, last_size",
    [(0, 1, 0), (100, 0, 50), (100, 2, 101), (100, 2, -1), (100, 3, 100)],
)
def test_merging_rows_that_the_buffer_does_not_hold_is_an_error(
    stride: int, count: int, last_size: int
) -> None:
    with pytest.raises(ValueError, match="rows"):
        _batch_loops.coalesce_rows(bytes(250), stride, count, last_size)
