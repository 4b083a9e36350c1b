"""The packet filter against what a receiving kernel reads: IPv6 extension header chains
(Hop-by-Hop, Routing, Fragment, Destination Options, AH), fragments and ICMPv6, built
byte for byte by scapy; hypothesis walks random chains (issue 22, finding 2)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.packet import Packet, Raw

from pilotif.node.policy import PeerIdentity, packet_filter, parse_policy
from pilotif.packet.filter import (
    MAX_IPV6_EXTENSION_HEADERS,
    MAX_IPV6_HEADER_CHAIN_BYTES,
    PacketFilter,
    Refusal,
)

PEER = PeerIdentity("peer", (), same_network=True)
OURS, THEIRS = "fd7a::1", "fd7a::2"
NOW = 1000.0
DENIED, ALLOWED = 22, 80
DENIED_UDP = 53
_AH_WITH_ICV_UNITS = 4
"""AH's payload length field for a 12-byte ICV: (12 + 12) / 4 - 2."""


def _filter(
    text: str = f"default allow\ndeny * {DENIED}/tcp\ndeny * {DENIED_UDP}/udp\n",
) -> PacketFilter:
    compiled = packet_filter(parse_policy(text, "test")[0], PEER)
    assert compiled is not None
    return compiled


def _from_peer(*layers: Packet) -> bytes:
    packet: Packet = IPv6(src=THEIRS, dst=OURS)
    for layer, after in zip(layers, (*layers[1:], None), strict=True):
        if isinstance(layer, AH) and after is not None:
            # scapy leaves AH's next header to us: the one IPv6 would give `after`.
            layer.nh = bytes(IPv6() / after.copy())[6]
        packet = packet / layer
    return bytes(packet)


def _ah() -> AH:
    return AH(payloadlen=_AH_WITH_ICV_UNITS, spi=1, seq=1, icv=b"\0" * 12)


CHAINS: dict[str, list[Packet]] = {
    "destination options": [IPv6ExtHdrDestOpt()],
    "hop-by-hop": [IPv6ExtHdrHopByHop()],
    "routing": [IPv6ExtHdrRouting()],
    "atomic fragment": [IPv6ExtHdrFragment(offset=0, m=0, id=7)],
    "authentication": [_ah()],
    "long destination options": [IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 80)])],
    "all of them": [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrRouting(),
        IPv6ExtHdrFragment(offset=0, m=0, id=7),
        _ah(),
        IPv6ExtHdrDestOpt(),
    ],
}


def _chain(name: str) -> list[Packet]:
    """A fresh copy of a chain (scapy fills in next headers when layers are stacked)."""
    return [layer.copy() for layer in CHAINS[name]]


def test_a_syn_behind_a_destination_options_header_to_a_denied_port_is_dropped() -> None:
    compiled = _filter()
    syn = _from_peer(IPv6ExtHdrDestOpt(), TCP(dport=DENIED, flags="S"))
    assert syn[6] == 60  # what a filter reading only the next header took for "other"

    assert compiled.judge(syn, NOW) == Refusal.POLICY_DENIED
    assert (
        compiled.judge(_from_peer(IPv6ExtHdrDestOpt(), TCP(dport=ALLOWED, flags="S")), NOW) is None
    )


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_tcp_and_udp_behind_extension_headers_are_judged_by_their_real_ports(chain: str) -> None:
    compiled = _filter()
    assert (
        compiled.judge(_from_peer(*_chain(chain), TCP(dport=DENIED, flags="S")), NOW)
        == Refusal.POLICY_DENIED
    )
    assert (
        compiled.judge(_from_peer(*_chain(chain), UDP(dport=DENIED_UDP)), NOW)
        == Refusal.POLICY_DENIED
    )
    assert compiled.judge(_from_peer(*_chain(chain), TCP(dport=ALLOWED, flags="S")), NOW) is None
    assert compiled.judge(_from_peer(*_chain(chain), TCP(dport=DENIED, flags="A")), NOW) is None


def test_a_first_fragment_to_a_denied_port_refuses_its_whole_datagram() -> None:
    compiled = _filter()
    first = _from_peer(IPv6ExtHdrFragment(offset=0, m=1, id=9), TCP(dport=DENIED, flags="S"))
    later = _from_peer(IPv6ExtHdrFragment(offset=3, m=0, id=9, nh=6), Raw(b"x" * 16))

    assert compiled.judge(first, NOW) == Refusal.POLICY_DENIED
    assert compiled.judge(later, NOW) == Refusal.FRAGMENT_UNMATCHED


def test_later_fragments_of_a_datagram_whose_first_fragment_passed_pass() -> None:
    compiled = _filter()
    first = _from_peer(IPv6ExtHdrFragment(offset=0, m=1, id=9), TCP(dport=ALLOWED, flags="S"))
    later = _from_peer(IPv6ExtHdrFragment(offset=3, m=0, id=9, nh=6), Raw(b"x" * 16))
    stranger = _from_peer(IPv6ExtHdrFragment(offset=3, m=0, id=10, nh=6), Raw(b"x" * 16))

    assert compiled.judge(first, NOW) is None
    assert compiled.judge(later, NOW + 1) is None
    assert compiled.judge(stranger, NOW + 1) == Refusal.FRAGMENT_UNMATCHED


def _destination_options(count: int) -> list[Packet]:
    return [IPv6ExtHdrDestOpt() for _ in range(count)]


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(
            _from_peer(
                *_destination_options(MAX_IPV6_EXTENSION_HEADERS + 1),
                TCP(dport=ALLOWED, flags="S"),
            ),
            id="too many headers",
        ),
        pytest.param(
            _from_peer(
                IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 255)] * 5),
                TCP(dport=ALLOWED, flags="S"),
            ),
            id="too many bytes",
        ),
        pytest.param(_from_peer(IPv6ExtHdrDestOpt())[:44], id="header cut short"),
        pytest.param(
            _from_peer(IPv6ExtHdrDestOpt(len=20, nh=6), Raw(b"\0" * 30)),
            id="header longer than the packet",
        ),
        pytest.param(
            _from_peer(
                IPv6ExtHdrFragment(offset=0, m=0, id=1),
                IPv6ExtHdrFragment(offset=0, m=1, id=2),
                TCP(dport=ALLOWED, flags="S"),
            ),
            id="two fragment headers",
        ),
        pytest.param(
            _from_peer(
                IPv6ExtHdrFragment(offset=0, m=1, id=3, nh=6), Raw(bytes(TCP(dport=ALLOWED))[:8])
            ),
            id="a first fragment without the TCP flags",
        ),
    ],
)
def test_a_chain_that_cannot_be_read_is_dropped_as_unreadable(packet: bytes) -> None:
    assert _filter().judge(packet, NOW) == Refusal.POLICY_UNREADABLE


def test_icmpv6_echo_follows_the_policy_errors_about_our_packets_pass_the_rest_not() -> None:
    compiled = _filter("default deny\n")
    ours = bytes(IPv6(src=OURS, dst=THEIRS) / UDP(sport=4000, dport=DENIED_UDP))
    not_ours = bytes(IPv6(src="fd7a::9", dst=THEIRS) / UDP(sport=4000, dport=DENIED_UDP))

    assert compiled.judge(_from_peer(ICMPv6EchoRequest()), NOW) == Refusal.POLICY_DENIED
    assert (
        _filter("default deny\nallow * icmp\n").judge(_from_peer(ICMPv6EchoRequest()), NOW) is None
    )
    assert compiled.judge(_from_peer(ICMPv6EchoReply()), NOW) is None
    assert compiled.judge(_from_peer(ICMPv6PacketTooBig(mtu=1280), Raw(ours)), NOW) is None
    assert compiled.judge(_from_peer(ICMPv6DestUnreach(), Raw(ours)), NOW) is None
    assert (
        compiled.judge(_from_peer(ICMPv6PacketTooBig(mtu=1280), Raw(not_ours)), NOW)
        == Refusal.POLICY_DENIED
    )
    for other in (ICMPv6ND_RA(), ICMPv6ND_NS(tgt=OURS), ICMPv6ND_Redirect(tgt=OURS, dst=THEIRS)):
        assert compiled.judge(_from_peer(other), NOW) == Refusal.POLICY_DENIED
    # Behind a Destination Options header, an echo request is still an echo request.
    assert (
        compiled.judge(_from_peer(IPv6ExtHdrDestOpt(), ICMPv6EchoRequest()), NOW)
        == Refusal.POLICY_DENIED
    )


_EXTENSIONS = st.one_of(
    st.builds(
        lambda n: IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0" * n)]),
        st.integers(0, 60),
    ),
    st.builds(
        lambda n: IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * n)]),
        st.integers(0, 60),
    ),
    st.just(IPv6ExtHdrRouting()),
    st.builds(
        lambda offset, more, ident: IPv6ExtHdrFragment(offset=offset, m=more, id=ident),
        st.sampled_from([0, 0, 0, 1, 8191]),
        st.integers(0, 1),
        st.integers(0, 3),
    ),
    st.builds(_ah),
)
_UPPER = st.one_of(
    st.builds(
        lambda port, flags: TCP(dport=port, flags=flags),
        st.sampled_from([DENIED, ALLOWED, 443]),
        st.sampled_from(["S", "SA", "A", "SF", "R"]),
    ),
    st.builds(lambda port: UDP(dport=port), st.sampled_from([DENIED_UDP, ALLOWED])),
    st.just(ICMPv6EchoRequest()),
)


def _opens_a_denied_port(packet: bytes) -> bool:
    """Whether scapy, reading `packet` as a kernel would, finds a connection or datagram
    to a denied port in it (it reads no further than AH; a later fragment is raw bytes)."""
    try:
        parsed = IPv6(packet)
    except IndexError:
        return False  # scapy cannot read it either (an option cut in the middle)
    if parsed.haslayer(TCP) and not parsed.haslayer(Raw):
        tcp = parsed[TCP]
        return bool(tcp.dport == DENIED and tcp.flags & 0x12 == 0x02)
    if parsed.haslayer(UDP):
        return bool(parsed[UDP].dport == DENIED_UDP)
    return False


def _is_denied(upper: Packet) -> bool:
    if isinstance(upper, TCP):
        return bool(upper.dport == DENIED and upper.flags & 0x12 == 0x02)
    return isinstance(upper, UDP) and upper.dport == DENIED_UDP


def _readable(extensions: list[Packet], upper: Packet, packet: bytes) -> bool:
    """Whether the chain is one the filter must read: within the limits, one fragment
    header at most and that one the first fragment."""
    fragments = [layer for layer in extensions if isinstance(layer, IPv6ExtHdrFragment)]
    upper_at = len(packet) - len(bytes(upper))
    return (
        len(extensions) <= MAX_IPV6_EXTENSION_HEADERS
        and upper_at - 40 <= MAX_IPV6_HEADER_CHAIN_BYTES
        and len(fragments) <= 1
        and all(fragment.offset == 0 for fragment in fragments)
    )


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_EXTENSIONS, max_size=MAX_IPV6_EXTENSION_HEADERS + 2),
    _UPPER,
    st.integers(0, 40),
    st.binary(max_size=4),
)
def test_random_extension_chains_never_crash_and_never_let_a_denied_port_through(
    extensions: list[Packet], upper: Packet, cut: int, garbage: bytes
) -> None:
    compiled = _filter()
    layers = [layer.copy() for layer in extensions]
    whole = _from_peer(*layers, upper.copy())
    verdict = compiled.judge(whole, NOW)
    if _is_denied(upper):
        assert verdict is not None
    elif _readable(layers, upper, whole) and not isinstance(upper, ICMPv6EchoRequest):
        assert verdict is None
    for part in (whole[: max(40, len(whole) - cut)], whole[:40] + garbage):
        verdict = compiled.judge(part, NOW)
        assert verdict is None or isinstance(verdict, Refusal)
        if _opens_a_denied_port(part):
            assert verdict is not None
