"""The netstack takes the ICMP "too big" that the data path writes when a segment exceeds
a peer's path MTU (docs/PATH_MTU.md): the connection's segments are cut to fit, and a
transfer over a path that drops larger packets completes intact. A "too big" that quotes
no connection of ours, or garbage, changes nothing; a peer cannot push the MSS below the
protocol's default. A destination unreachable about a segment is counted as what it is."""

from netstack_wire import Wire, open_pair, payload, transfer

from pilotif.netstack import State
from pilotif.netstack.tcp_connection import DEFAULT_MSS_IPV4, DEFAULT_MSS_IPV6
from pilotif.packet.icmp import parse_icmp_error, port_unreachable_packet, too_big_packet

PATH_MTU = 1280
SIZE = 400_000


def small_path(wire: Wire) -> list[int]:
    """Make the path a to b drop packets over PATH_MTU and answer each with a "too big"
    to a, as the data path does; the sizes of what passed."""
    passed: list[int] = []

    def tap(direction: str, packet: bytes) -> bool:
        if direction == "ab" and len(packet) > PATH_MTU:
            answer = too_big_packet(packet, PATH_MTU)
            assert answer is not None
            wire.inject("ba", answer)
            return False
        passed.append(len(packet))
        return True

    wire.tap = tap
    return passed


def test_a_transfer_over_a_smaller_path_completes_with_smaller_segments() -> None:
    wire = Wire()
    client, server = open_pair(wire)
    passed = small_path(wire)
    data = payload(SIZE, seed=5)
    assert transfer(wire, client, server, data) == data
    assert client.mss == PATH_MTU - 40
    assert wire.a.counters["mss_lowered"] == 1
    assert max(passed) <= PATH_MTU


def test_ipv6_too() -> None:
    wire = Wire()
    client, server = open_pair(wire, ipv6=True)
    small_path(wire)
    data = payload(SIZE, seed=6)
    assert transfer(wire, client, server, data) == data
    assert client.mss == PATH_MTU - 60


def test_a_too_big_cannot_push_the_mss_below_the_default() -> None:
    wire = Wire()
    client, _ = open_pair(wire)
    client.send(payload(3000, seed=1))
    wire.step()
    answer = too_big_packet(wire.last_sent["ab"], 100)
    assert answer is not None
    wire.inject("ba", answer)
    assert client.mss == DEFAULT_MSS_IPV4
    assert DEFAULT_MSS_IPV6 > DEFAULT_MSS_IPV4


def test_a_too_big_about_no_connection_or_garbage_changes_nothing() -> None:
    wire = Wire()
    client, _ = open_pair(wire)
    mss = client.mss
    client.send(payload(3000, seed=2))
    wire.step()
    answer = too_big_packet(wire.last_sent["ab"], PATH_MTU)
    assert answer is not None
    other_port = bytearray(answer)
    quoted_ports = 20 + 8 + 20
    other_port[quoted_ports] ^= 0xFF  # another source port: no connection of ours
    wire.inject("ba", bytes(other_port))
    assert wire.a.counters["too_big_no_connection"] == 1
    for cut in (21, 28, 40, 48, 51):
        wire.inject("ba", answer[:cut])  # truncated: dropped as it is
    assert parse_icmp_error(answer[:51]) is None
    assert client.mss == mss


def test_a_destination_unreachable_about_a_segment_is_counted_as_such() -> None:
    wire = Wire()
    client, _ = open_pair(wire)
    client.send(payload(3000, seed=2))
    wire.step()
    told = port_unreachable_packet(wire.last_sent["ab"])
    assert told is not None
    wire.inject("ba", told)
    assert wire.a.counters["icmp_unreachable"] == 1
    assert wire.a.counters["not_tcp"] == 0
    assert client.state is State.ESTABLISHED  # TCP has its resets and timers
