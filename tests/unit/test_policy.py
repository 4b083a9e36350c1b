"""The port policy: its text (parser, one error naming file and line), the decisions it
compiles to (checked against a brute-force reading with hypothesis), the packet filter
the device runs, and the files it is kept in."""

import struct
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotif.node.policy import (
    PeerIdentity,
    Policy,
    PolicyError,
    Rule,
    packet_filter,
    parse_policy,
    parse_rule,
)
from pilotif.node.policy_files import PolicyFiles
from pilotif.packet.filter import (
    FRAGMENT_TIMEOUT_S,
    UDP_REPLY_TIMEOUT_S,
    PacketFilter,
    PortDecisions,
)
from pilotif.wg.drops import DropReason

ORCHESTRATOR = PeerIdentity("orchestrator", ("workers",), same_network=True)
STRANGER = PeerIdentity("stranger", (), same_network=False)
OURS, THEIRS = IPv4Address("100.64.0.1"), IPv4Address("100.64.0.2")
TCP, UDP, ICMP = 6, 17, 1
SYN, ACK = 0x02, 0x10
NOW = 1000.0
POLICY_DENIED = DropReason.POLICY_DENIED

EXAMPLE = """\
# the orchestrator may reach the executor's API; workers their port range; pings in the
# network; never ssh
default deny
allow orchestrator 8080/tcp
allow tag:workers 9000-9100/udp   # granted tag
allow network icmp
deny * 22/tcp
"""


def _ipv4(
    proto: int,
    transport: bytes,
    *,
    fragment_offset: int = 0,
    source: IPv4Address = THEIRS,
    destination: IPv4Address = OURS,
) -> bytes:
    total = 20 + len(transport)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        fragment_offset,
        64,
        proto,
        0,
        source.packed,
        destination.packed,
    )
    return header + transport


def _tcp(port: int, flags: int, source_port: int = 40000) -> bytes:
    return _ipv4(TCP, struct.pack("!HHIIBBHHH", source_port, port, 0, 0, 0x50, flags, 0, 0, 0))


def _udp(port: int, source_port: int = 40000) -> bytes:
    return _ipv4(UDP, struct.pack("!HHHH", source_port, port, 8, 0))


def _icmp(kind: int) -> bytes:
    return _ipv4(ICMP, bytes([kind, 0, 0, 0, 0, 1, 0, 1]))


def _tcp6(port: int, flags: int) -> bytes:
    transport = struct.pack("!HHIIBBHHH", 40000, port, 0, 0, 0x50, flags, 0, 0, 0)
    header = struct.pack(
        "!IHBB16s16s",
        0x60000000,
        len(transport),
        TCP,
        64,
        IPv6Address("fd00::2").packed,
        IPv6Address("fd00::1").packed,
    )
    return header + transport


def _passes(compiled: PacketFilter, packet: bytes, now: float) -> bool:
    return compiled.judge(packet, now) is None


def _example_filter(peer: PeerIdentity) -> PacketFilter:
    policy, _ = parse_policy(EXAMPLE, "example")
    compiled = packet_filter(policy, peer)
    assert compiled is not None
    return compiled


# -- the text ------------------------------------------------------------------------


def test_the_example_reads_as_written() -> None:
    policy, has_default = parse_policy(EXAMPLE, "example")
    assert has_default and policy.default == "deny"
    assert [r.text() for r in policy.rules] == [
        "allow orchestrator 8080/tcp",
        "allow tag:workers 9000-9100/udp",
        "allow network icmp",
        "deny * 22/tcp",
    ]
    assert parse_policy(policy.text(), "again")[0] == policy


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("default maybe", ("default",)),
        ("permit alpha 80/tcp", ("allow or deny",)),
        ("allow alpha 80", ("PORTS/tcp",)),
        ("allow alpha 80/sctp", ("PORTS/tcp",)),
        ("allow alpha 0/tcp", ("1 to 65535",)),
        ("allow alpha 70000/tcp", ("1 to 65535",)),
        ("allow alpha 90-80/tcp", ("low to high",)),
        ("allow alpha x-y/tcp", ("LOW-HIGH",)),
        ("allow tag:not_a_label 80/tcp", ("not a peer",)),
        ("allow -bad- 80/tcp", ("not a peer",)),
        ("allow alpha", ("expected",)),
    ],
)
def test_a_bad_line_is_one_error_with_file_and_line(line: str, words: tuple[str, ...]) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(f"default deny\n\n{line}\n", "/etc/pilotif/policy")
    assert str(error.value).startswith("/etc/pilotif/policy:3: ")
    for word in words:
        assert word in str(error.value)


rules = st.builds(
    lambda action, target, proto, low, span: parse_rule(
        action, target, "icmp" if proto == "icmp" else f"{low}-{min(65535, low + span)}/{proto}"
    ),
    st.sampled_from(["allow", "deny"]),
    st.sampled_from(["*", "network", "tag:workers", "tag:other", "orchestrator", "stranger"]),
    st.sampled_from(["tcp", "udp", "icmp"]),
    st.integers(1, 65535),
    st.integers(0, 3000),
)


@given(st.sampled_from(["allow", "deny"]), st.lists(rules, max_size=10))
def test_any_policy_reads_back_from_its_text(default: str, drawn: list[Rule]) -> None:
    policy = Policy("allow" if default == "allow" else "deny", tuple(dict.fromkeys(drawn)))
    assert parse_policy(policy.text(), "x")[0] == policy


# -- what it decides -----------------------------------------------------------------------


def _brute_force(policy: Policy, peer: PeerIdentity, proto: str, port: int) -> bool:
    """The documented rule, read literally: a deny that names it refuses, else an
    allow that names it passes, else the default."""
    named = [
        r
        for r in policy.rules
        if peer.matches(r.target) and r.proto == proto and r.low <= port <= r.high
    ]
    if any(r.action == "deny" for r in named):
        return False
    return any(r.action == "allow" for r in named) or policy.default == "allow"


@settings(max_examples=200)
@given(
    st.sampled_from(["allow", "deny"]),
    st.lists(rules, max_size=10),
    st.sampled_from([ORCHESTRATOR, STRANGER]),
    st.lists(st.integers(1, 65535), min_size=1, max_size=20),
)
def test_compiled_decisions_agree_with_the_rules_read_literally(
    default: str, drawn: list[Rule], peer: PeerIdentity, ports: list[int]
) -> None:
    policy = Policy("allow" if default == "allow" else "deny", tuple(dict.fromkeys(drawn)))
    compiled = packet_filter(policy, peer)
    if policy.is_open:
        assert compiled is None
        return
    assert compiled is not None
    for port in ports:
        assert _passes(compiled, _tcp(port, SYN), NOW) == _brute_force(policy, peer, "tcp", port)
        expected_udp = _brute_force(policy, peer, "udp", port)
        assert _passes(compiled, _udp(port), NOW) == expected_udp
    icmp_named = [r.action for r in policy.rules if peer.matches(r.target) and r.proto == "icmp"]
    expected_icmp = "deny" not in icmp_named and ("allow" in icmp_named or default == "allow")
    assert _passes(compiled, _icmp(8), NOW) == expected_icmp


@given(
    st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), max_size=6),
    st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), max_size=6),
    st.booleans(),
    st.lists(st.integers(0, 65535), min_size=1, max_size=30),
)
def test_port_intervals_match_a_port_by_port_reading(
    allow: list[tuple[int, int]],
    deny: list[tuple[int, int]],
    default: bool,
    ports: list[int],
) -> None:
    allow = [(min(a, b), max(a, b)) for a, b in allow]
    deny = [(min(a, b), max(a, b)) for a, b in deny]
    decisions = PortDecisions.build(allow, deny, default)
    for port in ports:
        denied = any(lo <= port <= hi for lo, hi in deny)
        allowed = any(lo <= port <= hi for lo, hi in allow)
        assert decisions.allows(port) == (not denied and (allowed or default))


def test_the_open_policy_needs_no_filter() -> None:
    assert packet_filter(Policy(), STRANGER) is None
    assert packet_filter(Policy(rules=(parse_rule("allow", "*", "80/tcp"),)), STRANGER) is None


# -- the filter the device runs ---------------------------------------------------------


def test_tcp_connections_are_checked_when_opened_only() -> None:
    orchestrator = _example_filter(ORCHESTRATOR)
    assert _passes(orchestrator, _tcp(8080, SYN), NOW)
    assert not _passes(orchestrator, _tcp(22, SYN), NOW)
    assert not _passes(orchestrator, _tcp(8081, SYN), NOW)
    assert _passes(orchestrator, _tcp(22, SYN | ACK), NOW)
    assert _passes(orchestrator, _tcp(22, ACK), NOW)
    assert not _passes(_example_filter(STRANGER), _tcp(8080, SYN), NOW)
    assert _passes(orchestrator, _tcp6(8080, SYN), NOW)
    assert not _passes(orchestrator, _tcp6(443, SYN), NOW)


def test_udp_answers_to_what_we_sent_pass_until_they_expire() -> None:
    stranger = _example_filter(STRANGER)
    assert not _passes(stranger, _udp(5353, source_port=53), NOW)
    outbound = _ipv4(UDP, struct.pack("!HHHH", 5353, 53, 8, 0), source=OURS, destination=THEIRS)
    stranger.note_outbound(outbound, NOW)
    assert _passes(stranger, _udp(5353, source_port=53), NOW + 1)
    assert not _passes(stranger, _udp(5353, source_port=54), NOW + 1)
    assert not _passes(stranger, _udp(5353, source_port=53), NOW + UDP_REPLY_TIMEOUT_S + 1)
    assert _passes(_example_filter(ORCHESTRATOR), _udp(9050), NOW)


def test_a_udp_answer_window_is_for_the_addresses_it_was_opened_between() -> None:
    """The window is keyed by both addresses and both ports: the same ports from the
    peer's other address, or to another address of ours, are not answers."""
    stranger = _example_filter(STRANGER)
    other_theirs, other_ours = IPv4Address("100.64.0.3"), IPv4Address("100.64.0.4")
    outbound = _ipv4(UDP, struct.pack("!HHHH", 5353, 53, 8, 0), source=OURS, destination=THEIRS)
    stranger.note_outbound(outbound, NOW)
    answer = struct.pack("!HHHH", 53, 5353, 8, 0)

    assert _passes(stranger, _ipv4(UDP, answer), NOW + 1)
    assert stranger.judge(_ipv4(UDP, answer, source=other_theirs), NOW + 1) == POLICY_DENIED
    assert stranger.judge(_ipv4(UDP, answer, destination=other_ours), NOW + 1) == POLICY_DENIED


def _icmp_error(kind: int, quoted_source: IPv4Address, quoted_destination: IPv4Address) -> bytes:
    """An ICMP error from the peer quoting a UDP packet between the two addresses."""
    quoted = _ipv4(
        UDP,
        struct.pack("!HHHH", 5353, 53, 8, 0),
        source=quoted_source,
        destination=quoted_destination,
    )
    return _ipv4(ICMP, bytes([kind, 0, 0, 0, 0, 0, 0, 0]) + quoted)


def test_icmp_echo_requests_follow_the_policy_and_replies_and_errors_about_ours_pass() -> None:
    assert _passes(_example_filter(ORCHESTRATOR), _icmp(8), NOW)
    assert not _passes(_example_filter(STRANGER), _icmp(8), NOW)
    assert _passes(_example_filter(STRANGER), _icmp(0), NOW)
    # Unreachable (fragmentation needed too) and time exceeded about what we sent them.
    for kind in (3, 11):
        assert _passes(_example_filter(STRANGER), _icmp_error(kind, OURS, THEIRS), NOW)


def test_icmp_errors_about_packets_we_did_not_send_and_other_types_are_refused() -> None:
    stranger = _example_filter(STRANGER)
    elsewhere = IPv4Address("100.64.0.9")
    assert stranger.judge(_icmp_error(3, elsewhere, THEIRS), NOW) == POLICY_DENIED
    assert stranger.judge(_icmp_error(3, THEIRS, OURS), NOW) == POLICY_DENIED
    assert stranger.judge(_icmp(3), NOW) == DropReason.POLICY_UNREADABLE
    # A redirect (even quoting our packet), a timestamp request, an address mask request.
    assert stranger.judge(_icmp_error(5, OURS, THEIRS), NOW) == POLICY_DENIED
    for kind in (13, 17):
        assert stranger.judge(_icmp(kind), NOW) == POLICY_DENIED


def test_later_fragments_pass_only_after_a_first_fragment_that_passed() -> None:
    stranger = _example_filter(STRANGER)
    later = _ipv4(TCP, b"x" * 8, fragment_offset=100)
    assert stranger.judge(later, NOW) == DropReason.FRAGMENT_UNMATCHED
    more_fragments = 0x2000
    # A first fragment to a refused port: the rest of its datagram is refused too.
    refused_first = _ipv4(TCP, _tcp(22, SYN)[20:], fragment_offset=more_fragments)
    assert stranger.judge(refused_first, NOW) == POLICY_DENIED
    assert stranger.judge(later, NOW) == DropReason.FRAGMENT_UNMATCHED
    # The first fragment of an answer passes, and so do the datagram's later fragments
    # until the kernel would have given up reassembling it.
    first = _ipv4(TCP, _tcp(22, ACK)[20:], fragment_offset=more_fragments)
    assert _passes(stranger, first, NOW)
    assert _passes(stranger, later, NOW + 1)
    assert stranger.judge(later, NOW + FRAGMENT_TIMEOUT_S + 1) == DropReason.FRAGMENT_UNMATCHED


def test_a_first_fragment_without_its_ports_is_unreadable() -> None:
    stranger = _example_filter(STRANGER)
    more_fragments = 0x2000
    cut = _ipv4(TCP, _tcp(8080, ACK)[20:28], fragment_offset=more_fragments)
    assert stranger.judge(cut, NOW) == DropReason.POLICY_UNREADABLE


def test_other_protocols_get_the_default() -> None:
    stranger = _example_filter(STRANGER)
    assert stranger.judge(_ipv4(47, b"gre!"), NOW) == POLICY_DENIED
    assert stranger.judge(_ipv4(TCP, b"\x00\x16"), NOW) == DropReason.POLICY_UNREADABLE
    allow_all_but_ssh = packet_filter(parse_policy("deny * 22/tcp", "t")[0], STRANGER)
    assert allow_all_but_ssh is not None
    assert _passes(allow_all_but_ssh, _ipv4(47, b"gre!"), NOW)


# -- where it is kept -----------------------------------------------------------------------


def test_cli_rules_are_kept_after_the_file_and_their_default_wins(tmp_path: Path) -> None:
    operator = tmp_path / "policy"
    operator.write_text("default allow\ndeny * 22/tcp\n")
    files = PolicyFiles(tmp_path, operator)
    files.add(parse_rule("allow", "orchestrator", "22/tcp"))
    policy = files.set_default("deny")
    assert policy.default == "deny"
    assert [r.text() for r in policy.rules] == ["deny * 22/tcp", "allow orchestrator 22/tcp"]
    assert PolicyFiles(tmp_path, operator).load() == policy


def test_a_bad_file_is_refused_whole(tmp_path: Path) -> None:
    operator = tmp_path / "policy"
    operator.write_text("default deny\nallow orchestrator 8080/tcp\nallow x 99999/tcp\n")
    with pytest.raises(PolicyError, match=f"{operator}:3: "):
        PolicyFiles(tmp_path, operator).load()


def test_a_batch_passes_at_once_only_when_every_row_is_a_tcp_segment_that_opens_nothing() -> None:
    compiled = _example_filter(STRANGER)
    row = 64

    def batch(*packets: bytes, spare_rows: int = 2) -> memoryview:
        buffer = bytearray(row * (len(packets) + spare_rows))
        for index, packet in enumerate(packets):
            buffer[index * row : index * row + len(packet)] = packet
        # What lies after the batch (a SYN, here) is not part of it.
        buffer[len(packets) * row : len(packets) * row + 40] = _tcp(22, SYN)
        return memoryview(buffer)

    segments = [_tcp(22, ACK), _tcp(8080, ACK | 0x08), _tcp(22, SYN | ACK)]
    assert compiled.passes_rows(batch(*segments), 3, row)
    assert not compiled.passes_rows(batch(*segments, _tcp(22, SYN)), 4, row)
    assert not compiled.passes_rows(batch(*segments, _udp(53)), 4, row)
    # Fragments are looked at one by one (a later one's "flags" are payload bytes).
    ack = _tcp(22, ACK)[20:]
    for fragment in (0x2000, 100, 0x0100):
        fragmented = _ipv4(TCP, ack, fragment_offset=fragment)
        assert not compiled.passes_rows(batch(*segments, fragmented), 4, row)
    assert compiled.passes_rows(batch(*segments, _ipv4(TCP, ack, fragment_offset=0x4000)), 4, row)
