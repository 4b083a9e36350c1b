"""The wg-quick style configuration parser: every accepted form and every error."""

from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotif.daemon.wgquick import (
    ConfigError,
    InterfaceConfig,
    PeerConfig,
    load_config,
    parse_config,
)
from pilotif.wg.crypto import public_key
from pilotif.wg.keys import encode_key

PRIVATE_KEY = bytes(range(1, 33))
OWN_PUBLIC_KEY = public_key(PRIVATE_KEY)
PEER_A = bytes([0xA1]) * 32
PEER_B = bytes([0xB2]) * 32
PSK = bytes([0x55]) * 32
PATH = "wg0.conf"


def conf(*lines: str) -> str:
    """A file whose line N (from 1) is lines[N-1]."""
    return "\n".join(lines) + "\n"


def interface(*extra: str) -> tuple[str, ...]:
    return ("[Interface]", f"PrivateKey = {encode_key(PRIVATE_KEY)}", *extra)


def peer(key: bytes = PEER_A, *extra: str) -> tuple[str, ...]:
    return ("[Peer]", f"PublicKey = {encode_key(key)}", *extra)


def parse(*lines: str) -> InterfaceConfig:
    return parse_config(conf(*lines), PATH)


def error(*lines: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(*lines)
    return caught.value


def assert_error(err: ConfigError, line: int | None, *fragments: str) -> None:
    text = str(err)
    prefix = f"{PATH}:{line}: " if line is not None else f"{PATH}: "
    assert text.startswith(prefix), text
    assert err.line == line
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text, text


# Accepted forms


def test_minimal_interface_has_defaults() -> None:
    config = parse(*interface())
    assert config == InterfaceConfig(
        private_key=PRIVATE_KEY, addresses=(), listen_port=None, mtu=None, peers=()
    )


def test_full_example_is_read_field_by_field() -> None:
    config = parse(
        "# pilotif node",
        *interface(
            "Address = 100.64.0.1/24, fd7a:115c:a1e0::1/64",
            "ListenPort = 51820",
            "MTU = 1420",
        ),
        "",
        *peer(
            PEER_A,
            f"PresharedKey = {encode_key(PSK)}",
            "AllowedIPs = 100.64.0.2/32, fd7a:115c:a1e0::2/128",
            "Endpoint = 198.18.0.2:51820",
            "PersistentKeepalive = 25",
        ),
    )
    assert config == InterfaceConfig(
        private_key=PRIVATE_KEY,
        addresses=(ip_interface("100.64.0.1/24"), ip_interface("fd7a:115c:a1e0::1/64")),
        listen_port=51820,
        mtu=1420,
        peers=(
            PeerConfig(
                public_key=PEER_A,
                preshared_key=PSK,
                allowed_ips=(ip_network("100.64.0.2/32"), ip_network("fd7a:115c:a1e0::2/128")),
                endpoint=("198.18.0.2", 51820),
                persistent_keepalive_s=25,
            ),
        ),
    )


def test_keys_and_sections_are_case_insensitive() -> None:
    config = parse(
        "[interface]",
        f"privatekey={encode_key(PRIVATE_KEY)}",
        "ADDRESS=100.64.0.1/24",
        "listenPORT=1",
        "mtu=1400",
        "[PEER]",
        f"publickey={encode_key(PEER_A)}",
        "allowedips=100.64.0.2/32",
        "ENDPOINT=198.18.0.2:1",
        "persistentkeepalive=5",
        f"presharedkey={encode_key(PSK)}",
    )
    assert config.listen_port == 1
    assert config.mtu == 1400
    assert config.peers[0].endpoint == ("198.18.0.2", 1)
    assert config.peers[0].persistent_keepalive_s == 5
    assert config.peers[0].preshared_key == PSK


def test_comments_blank_lines_crlf_and_bom_are_ignored() -> None:
    text = (
        "\ufeff# header comment\r\n"
        "\r\n"
        "  [Interface]   # trailing comment\r\n"
        f"\tPrivateKey   =   {encode_key(PRIVATE_KEY)}  # the key\r\n"
        "Address = 100.64.0.1/24#no space before the comment\r\n"
    )
    config = parse_config(text, PATH)
    assert config.private_key == PRIVATE_KEY
    assert config.addresses == (ip_interface("100.64.0.1/24"),)


def test_address_may_repeat_and_defaults_to_a_host_prefix() -> None:
    config = parse(*interface("Address = 100.64.0.1", "Address = fd7a::1 , 100.64.9.1/10"))
    assert config.addresses == (
        ip_interface("100.64.0.1/32"),
        ip_interface("fd7a::1/128"),
        ip_interface("100.64.9.1/10"),
    )


def test_listen_port_zero_means_any_port() -> None:
    assert parse(*interface("ListenPort = 0")).listen_port is None


@pytest.mark.parametrize(
    ("address", "mtu"),
    [("100.64.0.1/24", 576), ("100.64.0.1/24", 65535), ("fd7a::1/64", 1280)],
)
def test_mtu_at_the_limits_is_accepted(address: str, mtu: int) -> None:
    assert parse(*interface(f"Address = {address}", f"MTU = {mtu}")).mtu == mtu


def test_allowed_ips_may_repeat_and_default_to_hosts() -> None:
    config = parse(
        *interface(),
        *peer(PEER_A, "AllowedIPs = 100.64.0.2", "AllowedIPs = fd7a::2, 0.0.0.0/0, ::/0"),
    )
    assert config.peers[0].allowed_ips == (
        ip_network("100.64.0.2/32"),
        ip_network("fd7a::2/128"),
        ip_network("0.0.0.0/0"),
        ip_network("::/0"),
    )


def test_peer_without_optional_keys() -> None:
    config = parse(*interface(), *peer(PEER_A))
    assert config.peers == (
        PeerConfig(
            public_key=PEER_A,
            preshared_key=None,
            allowed_ips=(),
            endpoint=None,
            persistent_keepalive_s=None,
        ),
    )


def test_peers_keep_file_order_and_may_overlap_with_different_prefixes() -> None:
    config = parse(
        *interface(),
        *peer(PEER_A, "AllowedIPs = 100.64.0.0/24"),
        *peer(PEER_B, "AllowedIPs = 100.64.0.2/32"),
    )
    assert [p.public_key for p in config.peers] == [PEER_A, PEER_B]


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("198.18.0.2:51820", ("198.18.0.2", 51820)),
        ("[fd00::1]:51820", ("fd00::1", 51820)),
        ("[FD00:0::1]:1", ("fd00::1", 1)),
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
        ("host.name:51820", ("host.name", 51820)),
        ("registry-1.example.org.:65535", ("registry-1.example.org.", 65535)),
        ("localhost:7", ("localhost", 7)),
    ],
)
def test_endpoint_forms(text: str, endpoint: tuple[str, int]) -> None:
    config = parse(*interface(), *peer(PEER_A, f"Endpoint = {text}"))
    assert config.peers[0].endpoint == endpoint


@pytest.mark.parametrize(
    ("text", "seconds"), [("25", 25), ("1", 1), ("65535", 65535), ("off", None), ("OFF", None)]
)
def test_persistent_keepalive_forms(text: str, seconds: int | None) -> None:
    config = parse(*interface(), *peer(PEER_A, f"PersistentKeepalive = {text}"))
    assert config.peers[0].persistent_keepalive_s == seconds


def test_persistent_keepalive_zero_is_off_as_in_wg() -> None:
    config = parse(*interface(), *peer(PEER_A, "PersistentKeepalive = 0"))
    assert config.peers[0].persistent_keepalive_s is None


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(conf(*interface("Address = 100.64.0.1/24"), *peer(PEER_A)))
    config = load_config(path)
    assert config.addresses == (ip_interface("100.64.0.1/24"),)
    assert config.peers[0].public_key == PEER_A


# Errors: structure


def test_no_interface_section_is_a_whole_file_error() -> None:
    assert_error(error(*peer(PEER_A)), None, "no [Interface] section")


def test_empty_file_is_a_whole_file_error() -> None:
    assert_error(error(""), None, "no [Interface] section")


def test_unknown_section() -> None:
    assert_error(error(*interface(), "[Peers]"), 3, "unknown section '[Peers]'", "[Peer]")


def test_section_header_without_closing_bracket() -> None:
    assert_error(error("[Interface"), 1, "'[Interface'", "expected [Interface] or [Peer]")


def test_second_interface_section() -> None:
    assert_error(error(*interface(), *interface()), 3, "second [Interface]", "line 1")


def test_key_outside_a_section() -> None:
    assert_error(error("MTU = 1420", *interface()), 1, "outside a section")


def test_line_without_equals() -> None:
    assert_error(error(*interface("Address 100.64.0.1/24")), 3, "expected 'Key = Value'")


def test_unknown_interface_key() -> None:
    assert_error(error(*interface("Adress = 100.64.0.1/24")), 3, "unknown key 'Adress'", "Address")


def test_unknown_peer_key() -> None:
    err = error(*interface(), *peer(PEER_A, "AllowedIP = 100.64.0.2/32"))
    assert_error(err, 5, "unknown key 'AllowedIP'", "AllowedIPs")


def test_peer_key_in_interface_section() -> None:
    err = error(*interface("Endpoint = 198.18.0.2:1"))
    assert_error(err, 3, "Endpoint belongs in the [Peer] section")


def test_interface_key_in_peer_section() -> None:
    err = error(*interface(), *peer(PEER_A, "ListenPort = 1"))
    assert_error(err, 5, "ListenPort belongs in the [Interface] section")


@pytest.mark.parametrize(
    "key", ["DNS", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig", "FwMark"]
)
def test_wg_quick_keys_pilotif_does_not_support(key: str) -> None:
    err = error(*interface(f"{key.lower()} = something"))
    assert_error(err, 3, f"{key} is not supported by pilotif")


def test_key_without_value() -> None:
    assert_error(error(*interface("MTU =")), 3, "MTU has no value")


@pytest.mark.parametrize("key_line", ["ListenPort = 1", "MTU = 1400"])
def test_single_valued_key_given_twice(key_line: str) -> None:
    err = error(*interface(key_line, key_line))
    assert_error(err, 4, "appears twice", "first on line 3")


def test_private_key_given_twice() -> None:
    err = error(*interface(f"PrivateKey = {encode_key(PRIVATE_KEY)}"))
    assert_error(err, 3, "PrivateKey appears twice", "first on line 2")


# Errors: keys


def test_missing_private_key_names_the_interface_line() -> None:
    err = error("# comment", "[Interface]", "Address = 100.64.0.1/24")
    assert_error(err, 2, "no PrivateKey", "wg genkey")


def test_missing_public_key_names_the_peer_line() -> None:
    err = error(*interface(), "[Peer]", "AllowedIPs = 100.64.0.2/32")
    assert_error(err, 3, "[Peer] has no PublicKey")


@pytest.mark.parametrize(
    ("lines", "line", "name"),
    [
        (("[Interface]", "PrivateKey = c2VjcmV0"), 2, "PrivateKey"),
        ((*interface(), "[Peer]", "PublicKey = not base64!"), 4, "PublicKey"),
        ((*interface(), *peer(PEER_A, "PresharedKey = " + "A" * 43)), 5, "PresharedKey"),
        ((*interface(), "[Peer]", "PublicKey = " + "\u00e9" * 44), 4, "PublicKey"),
    ],
)
def test_bad_base64_key(lines: tuple[str, ...], line: int, name: str) -> None:
    assert_error(error(*lines), line, f"bad {name}")


def test_bad_private_key_is_not_echoed() -> None:
    secret = "c2VjcmV0c2VjcmV0"
    assert secret not in str(error("[Interface]", f"PrivateKey = {secret}"))


def test_peer_with_our_own_public_key() -> None:
    err = error(*interface(), *peer(OWN_PUBLIC_KEY))
    assert_error(err, 4, "interface's own key")


def test_duplicate_peer_names_the_first() -> None:
    err = error(*interface(), *peer(PEER_A), *peer(PEER_A))
    assert_error(err, 6, "already listed (line 3)")


# Errors: addresses and networks


def test_same_allowed_ips_network_in_two_peers() -> None:
    err = error(
        *interface(),
        *peer(PEER_A, "AllowedIPs = 100.64.0.2/32"),
        *peer(PEER_B, "AllowedIPs = 100.64.0.3/32", "AllowedIPs = 100.64.0.2"),
    )
    assert_error(err, 9, "100.64.0.2/32 already belongs to the [Peer] on line 3")


def test_same_allowed_ips_network_twice_in_one_peer() -> None:
    err = error(*interface(), *peer(PEER_A, "AllowedIPs = fd7a::2/128, fd7a::2"))
    assert_error(err, 5, "fd7a::2/128 is listed twice")


def test_allowed_ips_with_host_bits_names_the_correct_form() -> None:
    err = error(*interface(), *peer(PEER_A, "AllowedIPs = 100.64.0.1/24"))
    assert_error(err, 5, "'100.64.0.1/24' has host bits set", "write 100.64.0.0/24")


@pytest.mark.parametrize("value", ["100.64.0.300/32", "fd7a::/129", "any", "fe80::%eth0/64"])
def test_bad_allowed_ips(value: str) -> None:
    err = error(*interface(), *peer(PEER_A, f"AllowedIPs = {value}"))
    assert_error(err, 5, repr(value))


@pytest.mark.parametrize("value", ["100.64.0.1/24,", "100.64.0.1/24,,fd7a::1/64", ","])
def test_empty_list_item(value: str) -> None:
    assert_error(error(*interface(f"Address = {value}")), 3, "empty item")


@pytest.mark.parametrize(
    "value",
    ["100.64.0.1/33", "100.64.0.256/24", "fd7a::1/129", "localhost", "100.64.0.1/24/1"],
)
def test_bad_address(value: str) -> None:
    assert_error(error(*interface(f"Address = {value}")), 3, f"bad Address {value!r}")


@pytest.mark.parametrize("value", ["0.0.0.0/0", "224.0.0.1/32", "::1/128", "ff02::1/128"])
def test_address_that_cannot_be_an_interface_address(value: str) -> None:
    assert_error(error(*interface(f"Address = {value}")), 3, "cannot be an interface address")


def test_address_with_scope() -> None:
    assert_error(error(*interface("Address = fe80::1%eth0/64")), 3, "scope")


def test_address_listed_twice() -> None:
    err = error(*interface("Address = 100.64.0.1/24", "Address = 100.64.0.1/24"))
    assert_error(err, 4, "100.64.0.1/24 is listed twice")


# Errors: numbers and endpoints


@pytest.mark.parametrize("value", ["65536", "-1", "http", "5e3", "1_000", "\uff19", "9" * 5000])
def test_bad_listen_port(value: str) -> None:
    assert_error(error(*interface(f"ListenPort = {value}")), 3, "ListenPort")


@pytest.mark.parametrize("value", ["575", "65536", "1420.5", "auto"])
def test_bad_mtu(value: str) -> None:
    assert_error(error(*interface(f"MTU = {value}")), 3, "MTU", "1420")


def test_mtu_too_small_for_ipv6_names_the_mtu_line() -> None:
    err = error(*interface("MTU = 1279", "Address = 100.64.0.1/24, fd7a::1/64"))
    assert_error(err, 3, "MTU 1279 is below 1280", "fd7a::1/64")


@pytest.mark.parametrize("value", ["65536", "-5", "never", "9" * 5000])
def test_bad_persistent_keepalive(value: str) -> None:
    err = error(*interface(), *peer(PEER_A, f"PersistentKeepalive = {value}"))
    assert_error(err, 5, "PersistentKeepalive")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("198.18.0.2", "HOST:PORT"),
        (":51820", "HOST:PORT"),
        ("198.18.0.2:", "port must be a number"),
        ("198.18.0.2:0", "port 0 is out of range"),
        ("198.18.0.2:65536", "out of range"),
        ("198.18.0.2:http", "must be a number"),
        ("fd00::1:51820", "brackets"),
        ("[fd00::1]51820", "HOST:PORT"),
        ("[fd00::1", "HOST:PORT"),
        ("[198.18.0.2]:1", "not an IPv6 address"),
        ("-bad-.example:1", "neither an IPv4 address nor a host name"),
        ("300.1.1.1:1", "neither an IPv4 address nor a host name"),
        ("under_score.example:1", "neither an IPv4 address nor a host name"),
        ("a..b:1", "neither an IPv4 address nor a host name"),
    ],
)
def test_bad_endpoint(value: str, fragment: str) -> None:
    err = error(*interface(), *peer(PEER_A, f"Endpoint = {value}"))
    assert_error(err, 5, "Endpoint", fragment)


# Files


def test_unreadable_file_is_a_whole_file_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.conf"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read the file: No such file or directory"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[Interface]\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "UTF-8" in str(caught.value)


def test_errors_from_load_config_name_the_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "wg1.conf"
    path.write_text(conf(*interface("MTU = tiny")))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:3: MTU must be a number")


# Arbitrary input

_FRAGMENTS = [
    "[Interface]",
    "[Peer]",
    "[peer",
    "",
    "# note",
    f"PrivateKey = {encode_key(PRIVATE_KEY)}",
    f"PublicKey = {encode_key(PEER_A)}",
    f"PublicKey = {encode_key(PEER_B)}",
    f"PublicKey = {encode_key(OWN_PUBLIC_KEY)}",
    f"PresharedKey = {encode_key(PSK)}",
    "Address = 100.64.0.1/24, fd7a::1/64",
    "AllowedIPs = 100.64.0.2/32",
    "AllowedIPs = 100.64.0.0/10, ::/0",
    "Endpoint = [fd00::1]:51820",
    "Endpoint = host.name:1",
    "ListenPort = 0",
    "MTU = 1280",
    "MTU = 600",
    "PersistentKeepalive = off",
    "DNS = 1.1.1.1",
]


@given(st.text())
def test_arbitrary_text_parses_or_raises_config_error(text: str) -> None:
    _parses_or_config_error(text)


@given(
    st.lists(
        st.one_of(
            st.sampled_from(_FRAGMENTS),
            st.builds(
                "{} = {}".format,
                st.sampled_from(
                    [
                        "Address",
                        "AllowedIPs",
                        "Endpoint",
                        "MTU",
                        "ListenPort",
                        "PersistentKeepalive",
                        "PrivateKey",
                        "PublicKey",
                        "PresharedKey",
                    ]
                ),
                st.text(max_size=30),
            ),
        ),
        max_size=20,
    )
)
def test_arbitrary_lines_parse_or_raise_config_error(lines: list[str]) -> None:
    _parses_or_config_error("\n".join(lines))


def _parses_or_config_error(text: str) -> None:
    try:
        config = parse_config(text, PATH)
    except ConfigError as err:
        assert str(err).startswith(PATH + ":")
        assert "\n" not in str(err)
    else:
        assert isinstance(config, InterfaceConfig)
