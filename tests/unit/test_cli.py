"""The command line as a user meets it: keys compatible with `wg`, and one clear line
(and a non-zero exit) for every kind of bad input. No root, no daemon."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pilotif.wg.crypto import public_key


def pilotif(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilotif", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pilotif: error: ")
    for word in words:
        assert word in lines[0]


def test_genkey_makes_a_clamped_curve25519_key_and_pubkey_derives_it() -> None:
    private_text = pilotif("genkey").stdout.strip()
    private = base64.b64decode(private_text, validate=True)
    assert len(private_text) == 44 and len(private) == 32
    assert private[0] & 7 == 0 and private[31] & 128 == 0 and private[31] & 64 == 64
    public_text = pilotif("pubkey", stdin=private_text + "\n").stdout.strip()
    assert base64.b64decode(public_text) == public_key(private)


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools (wg) is not installed")
def test_keys_are_byte_compatible_with_wg() -> None:
    ours = pilotif("genkey").stdout
    theirs = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    for private in (ours, theirs):
        wg_public = subprocess.run(
            ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
        ).stdout
        assert pilotif("pubkey", stdin=private).stdout == wg_public


@pytest.mark.parametrize("garbage", ["", "not a key", "QUJD", "é" * 44, "A" * 42 + "=="])
def test_pubkey_refuses_what_is_not_a_key(garbage: str) -> None:
    assert_one_line_error(pilotif("pubkey", stdin=garbage), "stdin", "key")


def test_up_needs_a_config_or_a_registry() -> None:
    assert_one_line_error(pilotif("up"), "--config", "--registry")


def test_up_takes_a_config_or_a_registry_not_both(tmp_path: Path) -> None:
    config = tmp_path / "pilot0.conf"
    config.write_text("[Interface]\nPrivateKey = nope\n")
    both = pilotif("up", "--config", str(config), "--registry", "198.18.0.1:7946")
    assert_one_line_error(both, "--config", "--registry")


def test_up_names_the_file_and_line_of_a_config_mistake(tmp_path: Path) -> None:
    config = tmp_path / "pilot0.conf"
    config.write_text("[Interface]\nPrivateKey = nope\nAddress = 100.64.0.1/24\n")
    assert_one_line_error(pilotif("up", "--config", str(config)), f"{config}:2")


def test_up_reports_a_missing_config_file(tmp_path: Path) -> None:
    assert_one_line_error(pilotif("up", "--config", str(tmp_path / "missing.conf")), "missing")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--registry", "nohostport", "--hostname", "a"], ["--registry", "HOST:PORT"]),
        (["--registry", "198.18.0.1:7946"], ["--hostname"]),
        (["--registry", "198.18.0.1:7946", "--hostname", "-bad-"], ["hostname"]),
        (
            ["--registry", "198.18.0.1:7946", "--hostname", "a", "--registry-key", "xx"],
            ["--registry-key"],
        ),
        (
            ["--registry", "198.18.0.1:7946", "--hostname", "a", "--auto-approve", "bob"],
            ["--auto-approve"],
        ),
    ],
)
def test_up_refuses_bad_registry_options(args: list[str], words: list[str]) -> None:
    assert_one_line_error(pilotif("up", *args), *words)


def test_an_unknown_option_is_one_line_pointing_at_help() -> None:
    assert_one_line_error(pilotif("status", "--bogus"), "--bogus", "pilotif status --help")


def test_status_without_a_daemon_says_how_to_start_it(tmp_path: Path) -> None:
    result = pilotif("status", "--json", "--state-dir", str(tmp_path))
    assert_one_line_error(result, "not running")
    error = json.loads(result.stdout)
    assert error["code"] == "not_running"
    assert "pilotif up" in error["hint"]


def test_node_commands_without_a_daemon_fail_cleanly(tmp_path: Path) -> None:
    for args in (["peers"], ["handshake", "beta"], ["pending"], ["find", "tag:x"]):
        assert_one_line_error(pilotif(*args, "--state-dir", str(tmp_path)), "not running")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["registry", "--listen", "0.0.0.0:99999"], ["--listen", "1..65535"]),
        (
            ["registry", "--listen", "127.0.0.1:9000", "--metrics", "127.0.0.1:http"],
            ["--metrics", "must be a number"],
        ),
        (["up", "--registry", "198.18.0.1:99999", "--hostname", "a"], ["--registry", "1..65535"]),
        (["up", "--registry", "fd00::1:9000", "--hostname", "a"], ["--registry", "[fd00::1]"]),
    ],
)
def test_every_host_port_option_refuses_what_is_not_host_port(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    """Issue 9: five parsers disagreed, and `registry --listen` took port 99999."""
    result = pilotif(*args, "--state-dir", str(tmp_path / "state"))
    assert_one_line_error(result, *words)
    assert not (tmp_path / "state").exists()


def test_a_state_dir_others_can_write_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Issue 9: `--state-dir /tmp` chmodded /tmp to 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    result = pilotif("registry", "--listen", "127.0.0.1:1", "--state-dir", str(shared))
    assert_one_line_error(result, str(shared), "writable by other users")
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert list(shared.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_state_dir_of_another_user_is_one_line_and_left_as_it_was(tmp_path: Path) -> None:
    """Issue 22: its owner could plant links where the daemon (root) writes and deletes."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    result = pilotif("registry", "--listen", "127.0.0.1:1", "--state-dir", str(theirs))
    assert_one_line_error(result, str(theirs), "belongs to uid 65534, not to this user")
    assert list(theirs.iterdir()) == []


def test_a_corrupted_registry_key_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "registry.key").write_text("not a key\n")
    result = pilotif("registry", "--listen", "127.0.0.1:1", "--state-dir", str(tmp_path))
    assert_one_line_error(result, str(tmp_path / "registry.key"), "does not hold a private key")


def test_connect_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    assert_one_line_error(pilotif("connect", "beta", "70000", "--state-dir", str(tmp_path)))


def test_status_says_which_offloads_are_on_and_what_was_refused() -> None:
    from pilotif.cli.main import _format_status

    state = {
        "interface": "pilot0",
        "public_key": "k",
        "listen_port": 51820,
        "addresses": ["100.64.0.1/10"],
        "mtu": 1420,
        "peers": [],
        "drops": {"replay": 0},
        "offloads": {
            "tun": {
                "vnet_hdr": True,
                "coalesced_writes": True,
                "tso": True,
                "uso": False,
                "refused": ["tso+uso: EINVAL"],
            },
            "tso_max_segments": 45,
            "udp": {
                "v4": {"gso": False, "gro": True, "gso_disabled": "EIO on a GSO send"},
                "v6": None,
            },
        },
        "node": None,
    }
    text = _format_status(state)
    assert "  tun: tso (up to 45 segments a read), coalesced writes" in text
    assert "  tun refused: tso+uso: EINVAL" in text
    assert "  udp v4: gro" in text
    assert "  udp v4 gso dropped: EIO on a GSO send" in text
    assert "udp v6" not in text


def test_status_names_each_relay_and_the_one_in_use() -> None:
    from pilotif.cli.main import _relay_state

    home = {"endpoint": "198.18.0.3:7947", "rtt_ms": 1.5, "alive": True, "home": True}
    dead = {"endpoint": "198.18.0.4:7947", "rtt_ms": None, "alive": False, "home": False}
    assert _relay_state(home) == "198.18.0.3:7947 1.5 ms (home: relayed traffic goes here)"
    assert _relay_state(dead) == "198.18.0.4:7947 (not measured) NOT ANSWERING"


def test_the_relay_and_the_registry_refuse_bad_relay_options(tmp_path: Path) -> None:
    state = ("--state-dir", str(tmp_path))
    assert_one_line_error(pilotif("relay", *state))
    assert_one_line_error(pilotif("relay", "--registry-key", "not-a-key", *state))
    assert_one_line_error(pilotif("relay", "--registry", "198.18.0.1:99999", *state))
    assert_one_line_error(pilotif("registry", "--relay", "198.18.0.3:7947", *state))
    assert_one_line_error(pilotif("registry", "--relay", "KEY@relay.example:7947", *state))
    assert not any(tmp_path.iterdir()), "nothing is written for bad input"


def test_a_relay_whose_registry_does_not_answer_says_so(tmp_path: Path) -> None:
    result = pilotif("relay", "--registry", "127.0.0.1:9", "--state-dir", str(tmp_path / "s"))
    assert_one_line_error(result, "did not say its key")
    assert not (tmp_path / "s").exists()


def test_status_says_since_when_the_registry_is_unreachable() -> None:
    from pilotif.cli.main import _registry_state

    since = time.time() - 42
    node = {"registry_online": False, "registry_unreachable_since": since}
    text = _registry_state(node)
    assert text.startswith("UNREACHABLE since ")
    assert text.endswith("(42 s)")
    assert _registry_state({"registry_online": True}) == "online"
    refused = {"registry_online": False, "registry_key_refused": "it has key K; delete X"}
    assert _registry_state(refused) == "KEY REFUSED: it has key K; delete X"
