"""UDP batching without sockets: which datagrams share a GSO send, how a GRO read splits."""

from pilotif.net.udp_batch import MAX_GSO_BYTES, UDP_MAX_SEGMENTS, gso_groups
from pilotif.wg.messages import split_coalesced

PEER = ("198.18.0.2", 51820)
OTHER = ("198.18.0.3", 51820)
FULL = 1452


def sizes(groups: list[tuple[tuple[str, int], int, list[bytes]]]) -> list[list[int]]:
    return [[len(d) for d in datagrams] for _, _, datagrams in groups]


def test_equal_datagrams_to_one_endpoint_share_a_send() -> None:
    datagrams = [(bytes(FULL), PEER)] * 10 + [(bytes(300), PEER)]
    groups = gso_groups(datagrams)
    assert sizes(groups) == [[FULL] * 10 + [300]]
    assert groups[0][:2] == (PEER, FULL)


def test_a_short_datagram_ends_its_send() -> None:
    datagrams = [(bytes(FULL), PEER), (bytes(300), PEER), (bytes(FULL), PEER)]
    assert sizes(gso_groups(datagrams)) == [[FULL, 300], [FULL]]


def test_a_larger_datagram_starts_a_new_send() -> None:
    datagrams = [(bytes(300), PEER), (bytes(FULL), PEER)]
    assert sizes(gso_groups(datagrams)) == [[300], [FULL]]


def test_another_endpoint_starts_a_new_send_and_order_is_kept() -> None:
    datagrams = [(bytes(FULL), PEER), (bytes(FULL), OTHER), (bytes(FULL), PEER)]
    assert [g[0] for g in gso_groups(datagrams)] == [PEER, OTHER, PEER]


def test_sends_respect_the_kernel_limits() -> None:
    small = gso_groups([(bytes(100), PEER)] * (UDP_MAX_SEGMENTS + 1))
    assert sizes(small) == [[100] * UDP_MAX_SEGMENTS, [100]]
    big = gso_groups([(bytes(FULL), PEER)] * 50)
    assert all(sum(s) <= MAX_GSO_BYTES for s in sizes(big))
    assert sum(len(s) for s in sizes(big)) == 50


def test_gro_read_splits_at_the_segment_size() -> None:
    buffer = memoryview(b"a" * FULL + b"b" * FULL + b"c" * 100)
    parts = split_coalesced(buffer, FULL)
    assert [bytes(p[:1]) for p in parts] == [b"a", b"b", b"c"]
    assert [len(p) for p in parts] == [FULL, FULL, 100]


def test_read_without_gro_size_is_one_datagram() -> None:
    buffer = memoryview(bytes(500))
    assert [len(p) for p in split_coalesced(buffer, 0)] == [500]
    assert [len(p) for p in split_coalesced(buffer, 500)] == [500]
