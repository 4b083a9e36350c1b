"""`up` for a userspace node, checked before anything starts: the one line `up` says
without root or /dev/net/tun (naming --userspace), proxies beyond loopback refused
without the flag and credentials, --forward, --expose and --expose-udp parsed, a
non-root user's state directory."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli_secrets import _up_args

from pilotif.cli import main as cli_module
from pilotif.cli import userspace
from pilotif.cli.main import cli
from pilotif.userspace.expose import Expose
from pilotif.userspace.forward import Forward
from pilotif.util import paths

NON_ROOT_UID = 1000


def up(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*_up_args(tmp_path / "state", *args), "--foreground"])
    return result.exit_code, result.output


def one_line(output: str, *words: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].lower().startswith(("pilotif: error: ", "error: "))
    for word in words:
        assert word in lines[0]


def test_up_without_root_says_so_in_one_line_naming_userspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(userspace.os, "geteuid", lambda: NON_ROOT_UID)
    code, output = up(tmp_path)
    assert code != 0
    one_line(output, "root", "pilotif up --userspace")


def test_up_without_a_tun_device_says_so_in_one_line_naming_userspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(userspace, "TUN_DEVICE", tmp_path / "no-tun")
    code, output = up(tmp_path)
    assert code != 0
    one_line(output, "no-tun", "pilotif up --userspace")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--socks5", "0.0.0.0:1080"), ("--socks5 0.0.0.0", "--allow-remote-proxy")),
        (("--http-proxy", "192.0.2.1:3128", "--allow-remote-proxy"), ("--http-proxy",)),
        (
            ("--socks5", "[::]:1080", "--proxy-credentials", "a:b"),
            ("--allow-remote-proxy", "--proxy-credentials"),
        ),
        (("--proxy-credentials", "nocolon"), ("USER:PASSWORD",)),
        (("--forward", "8080:beta"), ("LOCAL_PORT:PEER:PORT",)),
        (("--forward", "0:beta:80"), ("not a port",)),
        (("--expose", "80=99999"), ("not a port",)),
        (("--expose-udp", "x=53"), ("--expose-udp", "not a port")),
        (("--socks5", "nonsense"), ("--socks5",)),
    ],
)
def test_bad_userspace_options_are_refused_in_one_line(
    tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    code, output = up(tmp_path, "--userspace", *args)
    assert code != 0
    one_line(output, *words)


def test_userspace_options_reach_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    monkeypatch.setattr(cli_module, "_run_foreground", lambda *args: seen.append(args[-1]))
    monkeypatch.setattr(userspace.os, "geteuid", lambda: NON_ROOT_UID)
    code, output = up(
        tmp_path,
        "--userspace",
        "--socks5",
        "0.0.0.0:1080",
        "--allow-remote-proxy",
        "--proxy-credentials",
        "agent:pw",
        "--http-proxy",
        "127.0.0.1:3128",
        "--forward",
        "9000:beta.pilot:8080",
        "--expose",
        "8080",
        "--expose",
        "22=2222",
        "--expose-udp",
        "5353=53",
    )
    assert code == 0, output
    [options] = seen
    assert options.socks5 == ("0.0.0.0", 1080) and options.http_proxy == ("127.0.0.1", 3128)
    assert options.credentials == ("agent", "pw") and options.allow_remote
    assert options.forwards == (Forward(9000, "beta.pilot", 8080),)
    assert options.exposes == (Expose(8080, 8080), Expose(22, 2222))
    assert options.udp_exposes == (Expose(5353, 53),)
    assert "pw" not in repr(options)


def test_a_non_root_users_state_dir_follows_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths.os, "geteuid", lambda: NON_ROOT_UID)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert paths.default_state_dir() == tmp_path / "xdg" / "pilotif"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.default_state_dir() == tmp_path / "home" / ".local" / "state" / "pilotif"
