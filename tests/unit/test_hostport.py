"""HOST:PORT parsing, the one parser behind config files, CLI options and control messages."""

import pytest

from pilotif.control.wire import parse_endpoint
from pilotif.net.hostport import HostPortError, parse_address_port, parse_host_port


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("198.18.0.2:51820", ("198.18.0.2", 51820)),
        ("[fd00::1]:7946", ("fd00::1", 7946)),
        ("[FD00:0::1]:1", ("fd00::1", 1)),
        ("registry.example:65535", ("registry.example", 65535)),
        ("registry.example.:9000", ("registry.example.", 9000)),
        ("localhost:00080", ("localhost", 80)),
    ],
)
def test_host_port_forms(text: str, parsed: tuple[str, int]) -> None:
    assert parse_host_port(text) == parsed


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("198.18.0.2", "HOST:PORT"),
        (":9000", "HOST:PORT"),
        ("198.18.0.2:99999", "out of range 1..65535"),
        ("198.18.0.2:" + "9" * 5000, "out of range"),
        ("198.18.0.2:0", "out of range"),
        ("198.18.0.2:http", "must be a number"),
        ("198.18.0.2:-1", "must be a number"),
        ("198.18.0.2: 80", "must be a number"),
        ("fd00::1:80", "brackets"),
        ("[fd00::1]80", "HOST:PORT"),
        ("[not-v6]:80", "not an IPv6 address"),
        ("bad_host:80", "neither an IPv4 address nor a host name"),
        ("-dash.example:80", "neither"),
        ("198.18.0.256:80", "neither"),
        ("١٢٣.example:80", "neither"),
    ],
)
def test_what_is_not_host_port_says_why(text: str, words: str) -> None:
    with pytest.raises(HostPortError, match=words):
        parse_host_port(text)


def test_port_zero_only_where_any_port_is_meant() -> None:
    assert parse_host_port("0.0.0.0:0", lowest_port=0) == ("0.0.0.0", 0)


def test_endpoints_in_control_messages_are_address_literals() -> None:
    assert parse_address_port("[::ffff:198.18.0.1]:5") == ("::ffff:c612:1", 5)
    for text in ("registry.example:9000", "198.18.0.1:99999", "198.18.0.1:0"):
        with pytest.raises(ValueError):
            parse_endpoint(text)
