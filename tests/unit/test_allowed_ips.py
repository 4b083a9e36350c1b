"""Cryptokey routing table: longest prefix wins, per owner removal, replacement."""

from ipaddress import ip_address, ip_network

import pytest

from pilotif.wg.allowed_ips import AllowedIPs


def _raw(address: str) -> bytes:
    return ip_address(address).packed


@pytest.fixture
def table() -> AllowedIPs[str]:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(ip_network("100.64.0.0/10"), "wide")
    table.insert(ip_network("100.64.1.0/24"), "subnet")
    table.insert(ip_network("100.64.1.7/32"), "host")
    table.insert(ip_network("fd00::/8"), "wide")
    table.insert(ip_network("fd00:1::/64"), "subnet")
    table.insert(ip_network("fd00:1::7/128"), "host")
    return table


@pytest.mark.parametrize(
    "address, owner",
    [
        ("100.64.1.7", "host"),
        ("100.64.1.8", "subnet"),
        ("100.64.2.1", "wide"),
        ("100.127.255.255", "wide"),
        ("100.128.0.1", None),
        ("10.0.0.1", None),
        ("fd00:1::7", "host"),
        ("fd00:1::8", "subnet"),
        ("fd00:2::1", "wide"),
        ("fe80::1", None),
    ],
)
def test_longest_prefix_wins(table: AllowedIPs[str], address: str, owner: str | None) -> None:
    assert table.lookup(_raw(address)) == owner


def test_families_do_not_mix() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(ip_network("0.0.0.0/0"), "v4")
    assert table.lookup(_raw("::")) is None
    assert table.lookup(_raw("198.18.0.1")) == "v4"


def test_default_routes_catch_everything() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(ip_network("0.0.0.0/0"), "v4")
    table.insert(ip_network("::/0"), "v6")
    assert table.lookup(_raw("255.255.255.255")) == "v4"
    assert table.lookup(_raw("2001:db8::1")) == "v6"


def test_remove_value_forgets_all_its_networks(table: AllowedIPs[str]) -> None:
    table.remove_value("subnet")
    assert table.lookup(_raw("100.64.1.8")) == "wide"
    assert table.lookup(_raw("fd00:1::8")) == "wide"
    assert table.lookup(_raw("100.64.1.7")) == "host"
    assert table.networks_of("subnet") == []


def test_insert_replaces_the_owner_of_the_same_prefix(table: AllowedIPs[str]) -> None:
    table.insert(ip_network("100.64.1.0/24"), "newcomer")
    assert table.lookup(_raw("100.64.1.8")) == "newcomer"
    assert table.networks_of("subnet") == [ip_network("fd00:1::/64")]


def test_networks_of(table: AllowedIPs[str]) -> None:
    assert table.networks_of("host") == [ip_network("100.64.1.7/32"), ip_network("fd00:1::7/128")]
    assert table.networks_of("nobody") == []


def test_lookup_of_a_bad_length_address_finds_nothing(table: AllowedIPs[str]) -> None:
    assert table.lookup(b"\x64\x40\x01") is None
    assert table.lookup(b"") is None
