"""The guard of the overlay addresses (`pilotif.tun.guard`) without root, against a fake
`nft` that records its script: what it writes, what it refuses to write, and what it says
when nftables is missing (the policy lab tests what the kernel then drops)."""

from ipaddress import ip_interface
from pathlib import Path

import pytest

from pilotif.tun.guard import GuardError, guard_overlay_addresses, remove_guard, table_name

ADDRESSES = [ip_interface("100.64.0.1/10"), ip_interface("fd50::1/64")]


@pytest.fixture
def nft_scripts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fake `nft` alone on PATH; the scripts it was given land in the returned file."""
    scripts = tmp_path / "scripts"
    fake = tmp_path / "bin" / "nft"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexec /bin/cat >> {scripts}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    return scripts


def test_the_table_drops_the_overlay_addresses_unless_they_come_from_the_tun(
    nft_scripts: Path,
) -> None:
    guard_overlay_addresses("pilot0", ADDRESSES)
    script = nft_scripts.read_text()
    # Replaces a table left by an earlier run, in the same transaction.
    assert script.index("delete table inet pilotif_pilot0") < script.index("hook prerouting")
    assert 'iifname != { "pilot0", "lo" } ip daddr { 100.64.0.1 } counter drop' in script
    assert 'iifname != { "pilot0", "lo" } ip6 daddr { fd50::1 } counter drop' in script


def test_an_interface_name_that_could_inject_nftables_syntax_is_refused(
    nft_scripts: Path,
) -> None:
    with pytest.raises(GuardError, match="interface name"):
        guard_overlay_addresses('pilot0" } accept; #', ADDRESSES)
    assert not nft_scripts.exists()


def test_without_nft_the_guard_says_to_install_nftables_and_removing_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GuardError, match="install nftables"):
        guard_overlay_addresses("pilot0", ADDRESSES)
    remove_guard("pilot0")


def test_each_interface_has_a_table_of_its_own() -> None:
    assert table_name("pilot0") == "pilotif_pilot0"
    assert table_name("pilot-1.a") == "pilotif_pilot_1_a"
