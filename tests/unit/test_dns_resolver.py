"""Pointing resolv.conf at the responder and back, on a temp file: edited in place (same
inode), restored byte for byte, recovered after a crash; and the systemd-resolved mode with a
stand-in `resolvectl` that records its arguments."""

import stat
from ipaddress import ip_network
from pathlib import Path

import pytest

from pilotif.dns import ResolverConfig, ResolverError
from pilotif.dns.resolver import reverse_zone

ORIGINAL = (
    "# written by the network manager\r\n"
    "search corp.example\n"
    "nameserver 10.0.0.2\n"
    "nameserver fe80::1%eth0\n"
    "options ndots:2 rotate\n"
    "nameserver 10.0.0.3"  # no final newline
)
RESPONDER = "100.64.0.1"


@pytest.fixture
def resolv_conf(tmp_path: Path) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL.encode())
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def config(state_dir: Path, resolv_conf: Path) -> ResolverConfig:
    return ResolverConfig(state_dir, resolv_conf, resolved_stub=state_dir / "no-stub")


def test_apply_puts_our_nameserver_first_and_keeps_the_rest(
    state_dir: Path, resolv_conf: Path
) -> None:
    config(state_dir, resolv_conf).apply("pilot0", RESPONDER)
    lines = resolv_conf.read_text().splitlines()
    assert lines[0] == f"# pilotif: managed, original saved in {state_dir}/resolv.conf.orig"
    nameservers = [line.split()[1] for line in lines if line.startswith("nameserver")]
    assert nameservers == [RESPONDER, "10.0.0.2", "fe80::1%eth0", "10.0.0.3"]
    assert "search corp.example" in lines
    assert "options ndots:2" in lines  # rotate would send .pilot names elsewhere


def test_original_is_saved_privately(state_dir: Path, resolv_conf: Path) -> None:
    config(state_dir, resolv_conf).apply("pilot0", RESPONDER)
    saved = state_dir / "resolv.conf.orig"
    assert saved.read_bytes() == ORIGINAL.encode()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_file_is_edited_in_place(state_dir: Path, resolv_conf: Path) -> None:
    inode = resolv_conf.stat().st_ino
    resolver = config(state_dir, resolv_conf)
    resolver.apply("pilot0", RESPONDER)
    assert resolv_conf.stat().st_ino == inode
    resolver.restore()
    assert resolv_conf.stat().st_ino == inode


def test_restore_gives_back_the_original_bytes(state_dir: Path, resolv_conf: Path) -> None:
    resolver = config(state_dir, resolv_conf)
    resolver.apply("pilot0", RESPONDER)
    resolver.restore()
    assert resolv_conf.read_bytes() == ORIGINAL.encode()
    assert not (state_dir / "resolv.conf.orig").exists()
    resolver.restore()
    assert resolv_conf.read_bytes() == ORIGINAL.encode()


def test_original_nameservers_are_the_upstreams_without_ours(
    state_dir: Path, resolv_conf: Path
) -> None:
    resolver = config(state_dir, resolv_conf)
    expected = ["10.0.0.2", "fe80::1%eth0", "10.0.0.3"]
    assert resolver.original_nameservers() == expected
    resolver.apply("pilot0", RESPONDER)
    assert resolver.original_nameservers() == expected


def test_apply_after_a_crash_restores_first(state_dir: Path, resolv_conf: Path) -> None:
    config(state_dir, resolv_conf).apply("pilot0", RESPONDER)  # then the daemon dies
    again = config(state_dir, resolv_conf)
    assert again.original_nameservers() == ["10.0.0.2", "fe80::1%eth0", "10.0.0.3"]
    again.apply("pilot0", "100.64.0.9")
    text = resolv_conf.read_text()
    assert text.count("# pilotif: managed") == 1
    assert RESPONDER not in text
    again.restore()
    assert resolv_conf.read_bytes() == ORIGINAL.encode()


def test_restore_without_the_saved_copy_removes_our_lines(
    state_dir: Path, resolv_conf: Path
) -> None:
    original = "nameserver 10.0.0.2\nsearch corp.example\n"
    resolv_conf.write_text(original)
    config(state_dir, resolv_conf).apply("pilot0", RESPONDER)
    (state_dir / "resolv.conf.orig").unlink()  # state directory lost
    config(state_dir, resolv_conf).restore()
    assert resolv_conf.read_text() == original


def test_file_replaced_by_someone_else_is_left_alone(state_dir: Path, resolv_conf: Path) -> None:
    resolver = config(state_dir, resolv_conf)
    resolver.apply("pilot0", RESPONDER)
    resolv_conf.write_text("nameserver 192.0.2.1\n")  # e.g. a DHCP client
    resolver.restore()
    assert resolv_conf.read_text() == "nameserver 192.0.2.1\n"
    assert not (state_dir / "resolv.conf.orig").exists()


def test_missing_resolv_conf_says_so(state_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ResolverError, match="cannot read"):
        config(state_dir, tmp_path / "absent").apply("pilot0", RESPONDER)


@pytest.fixture
def resolved(tmp_path: Path) -> tuple[ResolverConfig, Path, Path]:
    """A machine with systemd-resolved: stub file, resolv.conf naming 127.0.0.53, and a
    `resolvectl` that appends its arguments to a log."""
    stub = tmp_path / "stub-resolv.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    log = tmp_path / "resolvectl.log"
    resolvectl = tmp_path / "resolvectl"
    resolvectl.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    resolvectl.chmod(0o755)
    resolver = ResolverConfig(
        tmp_path / "state", resolv_conf, resolved_stub=stub, resolvectl=str(resolvectl)
    )
    return resolver, resolv_conf, log


def test_with_resolved_the_link_gets_our_server_for_pilot_only(
    resolved: tuple[ResolverConfig, Path, Path],
) -> None:
    resolver, resolv_conf, log = resolved
    before = resolv_conf.read_bytes()
    assert resolver.uses_resolved()
    assert resolver.original_nameservers() == []
    resolver.apply("pilot0", RESPONDER)
    assert log.read_text().splitlines() == [f"dns pilot0 {RESPONDER}", "domain pilot0 ~pilot"]
    resolver.restore()
    assert log.read_text().splitlines()[-1] == "revert pilot0"
    assert resolv_conf.read_bytes() == before


def test_failing_resolvectl_says_what_to_check(
    resolved: tuple[ResolverConfig, Path, Path], tmp_path: Path
) -> None:
    resolver, _, _ = resolved
    failing = tmp_path / "resolvectl"
    failing.write_text("#!/bin/sh\necho 'Failed to set DNS' >&2\nexit 1\n")
    with pytest.raises(ResolverError, match="systemd-resolved"):
        resolver.apply("pilot0", RESPONDER)


def test_with_resolved_the_overlays_reverse_lookups_come_to_us_too(
    resolved: tuple[ResolverConfig, Path, Path],
) -> None:
    resolver, _, log = resolved
    overlays = [ip_network("100.64.0.0/10"), ip_network("fd50:696c:6f74::/48")]
    resolver.apply("pilot0", RESPONDER, overlays)
    assert log.read_text().splitlines()[-1] == (
        "domain pilot0 ~pilot ~100.in-addr.arpa ~4.7.f.6.c.6.9.6.0.5.d.f.ip6.arpa"
    )


@pytest.mark.parametrize(
    ("network", "zone"),
    [
        ("100.64.0.0/10", "100.in-addr.arpa"),
        ("10.1.0.0/16", "1.10.in-addr.arpa"),
        ("192.168.7.0/24", "7.168.192.in-addr.arpa"),
        ("fd00::/8", "d.f.ip6.arpa"),
    ],
)
def test_a_networks_reverse_zone_is_its_whole_octets_or_nibbles(network: str, zone: str) -> None:
    assert reverse_zone(ip_network(network)) == zone
