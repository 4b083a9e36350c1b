"""The DNS responder core: `.pilot` answers from the name table, other names left to forward,
garbage dropped and counted, never raised."""

from ipaddress import IPv4Address, IPv6Address

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotif.dns import Action, DnsDrop, DnsResponder, NameTable

BETA_V4 = IPv4Address("100.64.0.2")
BETA_V6 = IPv6Address("fd50:696c:6f74::2")
GAMMA_V4 = IPv4Address("100.64.0.3")


@pytest.fixture
def responder() -> DnsResponder:
    table = NameTable()
    table.update({"beta": (BETA_V4, BETA_V6), "gamma": (GAMMA_V4, None)})
    return DnsResponder(table)


def ask(responder: DnsResponder, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    wire = responder.answer(query.to_wire())
    assert wire is not None
    response = dns.message.from_wire(wire)
    assert response.id == query.id
    assert response.question == query.question
    return response


def addresses(response: dns.message.Message) -> list[str]:
    return [rdata.to_text() for rrset in response.answer for rdata in rrset]


def test_a_query_gets_the_ipv4_address_authoritatively_with_ttl_60(
    responder: DnsResponder,
) -> None:
    response = ask(responder, "beta.pilot", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert addresses(response) == ["100.64.0.2"]
    assert response.answer[0].ttl == 60


def test_aaaa_query_gets_the_ipv6_address(responder: DnsResponder) -> None:
    response = ask(responder, "beta.pilot", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert addresses(response) == ["fd50:696c:6f74::2"]


def test_missing_family_is_noerror_without_answer(responder: DnsResponder) -> None:
    response = ask(responder, "gamma.pilot", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


def test_other_types_are_noerror_without_answer(responder: DnsResponder) -> None:
    response = ask(responder, "beta.pilot", "MX")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


def test_any_query_gets_both_addresses(responder: DnsResponder) -> None:
    assert sorted(addresses(ask(responder, "beta.pilot", "ANY"))) == [
        "100.64.0.2",
        "fd50:696c:6f74::2",
    ]


@pytest.mark.parametrize("name", ["delta.pilot", "x.beta.pilot"])
def test_unknown_name_is_nxdomain(responder: DnsResponder, name: str) -> None:
    response = ask(responder, name)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert response.answer == []


def test_names_are_case_insensitive_and_keep_the_query_case(responder: DnsResponder) -> None:
    response = ask(responder, "BeTa.PILOT", "A")
    assert addresses(response) == ["100.64.0.2"]
    assert response.answer[0].name.to_text() == "BeTa.PILOT."


def test_table_update_replaces_all_names(responder: DnsResponder) -> None:
    responder.table.update({"delta": (IPv4Address("100.64.0.4"), None)})
    assert addresses(ask(responder, "delta.pilot")) == ["100.64.0.4"]
    assert ask(responder, "beta.pilot").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("name", ["example.com", "pilot.example.com", "notpilot"])
def test_names_outside_pilot_are_left_to_forward(responder: DnsResponder, name: str) -> None:
    query = dns.message.make_query(name, "A").to_wire()
    assert responder.answer(query) is None
    assert responder.decide(query) is Action.FORWARD
    assert responder.counters == {}


def test_garbage_is_dropped_and_counted(responder: DnsResponder) -> None:
    assert responder.answer(b"\x00\x01garbage") is None
    assert responder.decide(b"") is Action.DROP
    assert responder.counters == {DnsDrop.MALFORMED: 2}


def test_a_response_is_not_answered(responder: DnsResponder) -> None:
    query = dns.message.make_query("beta.pilot", "A")
    response = dns.message.make_response(query).to_wire()
    assert responder.decide(response) is Action.DROP
    assert responder.counters == {DnsDrop.NOT_QUERY: 1}


def test_other_opcodes_are_dropped(responder: DnsResponder) -> None:
    query = dns.message.make_query("beta.pilot", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    assert responder.decide(query.to_wire()) is Action.DROP
    assert responder.counters == {DnsDrop.OPCODE: 1}


def test_query_without_question_is_dropped(responder: DnsResponder) -> None:
    query = dns.message.make_query("beta.pilot", "A")
    query.question = []
    assert responder.decide(query.to_wire()) is Action.DROP
    assert responder.counters == {DnsDrop.QUESTION_COUNT: 1}


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    table = NameTable()
    table.update({"beta": (BETA_V4, BETA_V6)})
    responder = DnsResponder(table)
    decision = responder.decide(data)
    if isinstance(decision, bytes):
        assert dns.message.from_wire(decision).flags & dns.flags.QR
    assert (decision is Action.DROP) == (sum(responder.counters.values()) == 1)


@given(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1), st.binary(max_size=40))
def test_any_type_and_class_is_answered_and_trailing_bytes_dropped(
    qtype: int, qclass: int, tail: bytes
) -> None:
    wire = dns.message.make_query("beta.pilot", "A").to_wire()[:-4]
    wire += qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big") + tail
    table = NameTable()
    table.update({"beta": (BETA_V4, BETA_V6)})
    decision = DnsResponder(table).decide(wire)
    if tail:
        assert decision is Action.DROP
    else:
        assert isinstance(decision, bytes)


def test_other_classes_are_refused(responder: DnsResponder) -> None:
    query = dns.message.make_query("beta.pilot", "A", rdclass="CH")
    wire = responder.answer(query.to_wire())
    assert wire is not None
    assert dns.message.from_wire(wire).rcode() == dns.rcode.REFUSED


def test_zone_apex_exists_without_addresses(responder: DnsResponder) -> None:
    response = ask(responder, "pilot", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


@pytest.mark.parametrize(("address", "name"), [(BETA_V4, "beta.pilot."), (BETA_V6, "beta.pilot.")])
def test_a_peers_address_gets_its_name_back(
    responder: DnsResponder, address: IPv4Address | IPv6Address, name: str
) -> None:
    """Issue 12: `ping beta.pilot` looks the address up the other way; the responder
    answers that itself instead of waiting on the upstream."""
    response = ask(responder, dns.reversename.from_address(str(address)).to_text(), "PTR")
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert addresses(response) == [name]


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("9.0.64.100.in-addr.arpa.", "PTR"),  # an overlay address of nobody we know
        ("1.1.168.192.in-addr.arpa.", "PTR"),
        ("2.0.64.100.in-addr.arpa.", "A"),
        ("x.2.0.64.100.in-addr.arpa.", "PTR"),
    ],
)
def test_other_reverse_names_are_left_to_forward(
    responder: DnsResponder, name: str, rdtype: str
) -> None:
    query = dns.message.make_query(name, rdtype)
    assert responder.decide(query.to_wire()) is Action.FORWARD
