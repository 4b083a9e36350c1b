"""`pilotif up --transport` and `--proxy`: what reaches the daemon's node options, the
proxy's password kept off the daemon's command line, and bad input in one line."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pilotif.cli import main as cli_module
from pilotif.cli.main import PROXY_ENV, cli
from pilotif.net.fallback import TransportMode
from pilotif.net.proxy import Proxy
from tests.unit.test_cli_secrets import _Started

PROXY = "http://agent:pa55word@10.0.0.8:3128"


def _up(state_dir: Path, *extra: str) -> list[str]:
    args = ["up", "--registry", "127.0.0.1:9", "--hostname", "alpha", *extra]
    return [*args, "--state-dir", str(state_dir)]


@pytest.fixture
def foreground(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The node options `up --foreground` would run the daemon with (it is not run)."""
    calls: list[Any] = []

    def record(*args: Any) -> None:
        calls.append(args[4])

    monkeypatch.setattr(cli_module, "_run_foreground", record)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv(PROXY_ENV, raising=False)
    return calls


def test_transport_and_proxy_reach_the_node(tmp_path: Path, foreground: list[Any]) -> None:
    args = _up(tmp_path / "s", "--transport", "tcp", "--proxy", PROXY, "--foreground")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [options] = foreground
    assert options.transport is TransportMode.TCP
    assert options.proxy == Proxy("10.0.0.8", 3128, ("agent", "pa55word"))


def test_auto_and_https_proxy_are_the_defaults(
    tmp_path: Path, foreground: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:8080")
    result = CliRunner().invoke(cli, _up(tmp_path / "s", "--foreground"))
    assert result.exit_code == 0, result.output
    [options] = foreground
    assert options.transport is TransportMode.AUTO
    assert options.proxy == Proxy("proxy.corp", 8080)


def test_the_proxy_password_stays_off_the_daemons_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreground: list[Any]
) -> None:
    args = _up(tmp_path / "s", "--proxy", PROXY)
    monkeypatch.setattr(subprocess, "Popen", _Started)
    monkeypatch.setattr(sys, "argv", ["pilotif", *args])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "pa55word" not in " ".join(_Started.command)
    assert _Started.env[PROXY_ENV] == PROXY


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--proxy", "socks5://p:1080"], {}, "--proxy"),
        (["--proxy", "http://p:port"], {}, "--proxy"),
        ([], {"HTTPS_PROXY": "ftp://p"}, "HTTPS_PROXY"),
    ],
)
def test_a_proxy_we_cannot_use_is_one_line(
    tmp_path: Path,
    foreground: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    says: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, _up(tmp_path / "s", *args, "--foreground"))
    assert result.exit_code != 0
    [line] = result.output.strip().splitlines()
    assert says in line and "http://" in line
    assert foreground == []


def test_an_unknown_transport_is_refused(tmp_path: Path, foreground: list[Any]) -> None:
    result = CliRunner().invoke(cli, _up(tmp_path / "s", "--transport", "quic", "--foreground"))
    assert result.exit_code != 0 and "quic" in result.output
