"""Secrets given to `pilotif` (a join key, a webhook URL with a token, a database URL with
its password) stay off command lines: /proc/PID/cmdline is readable by every local user.
`up` starts its daemon with them in its environment, and each can come from a file
(`file:PATH`) or an environment variable instead of the command line."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from pilotif.cli import main as cli_module
from pilotif.cli.common import DATABASE_ENV
from pilotif.cli.main import JOIN_KEY_ENV, READY_FD_ENV, WEBHOOK_ENV, cli
from pilotif.registry.joinkey import new_join_key

JOIN_KEY = new_join_key()[1]
WEBHOOK = "https://hooks.example.org/events?token=s3cr3t-token"


class _Started:
    """Stands in for subprocess.Popen: keeps the daemon's command and environment, and
    says `ready` on its readiness pipe as the daemon would."""

    command: ClassVar[list[str]] = []
    env: ClassVar[dict[str, str]] = {}

    def __init__(self, command: list[str], **options: Any) -> None:
        _Started.command, _Started.env = command, options["env"]
        os.write(int(options["env"][READY_FD_ENV]), b"ready\n")
        self.pid = 4242

    def poll(self) -> int | None:
        return None


def _up_args(state_dir: Path, *secrets: str) -> list[str]:
    return [
        "up",
        "--registry",
        "127.0.0.1:9",
        "--hostname",
        "alpha",
        *secrets,
        "--state-dir",
        str(state_dir),
    ]


@pytest.fixture
def foreground(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `up --foreground` would run the daemon with (it is not run)."""
    calls: list[dict[str, Any]] = []

    def record(
        config: Any,
        interface: str,
        paths: Any,
        log_format: str,
        node_options: Any,
        observe: Any,
        policy: Any,
        userspace: Any,
    ) -> None:
        calls.append(
            {
                "join_key": node_options.join_key,
                "webhook": observe.webhook,
                "environment": {n: os.environ.get(n) for n in (JOIN_KEY_ENV, WEBHOOK_ENV)},
            }
        )

    monkeypatch.setattr(cli_module, "_run_foreground", record)
    return calls


def test_up_starts_its_daemon_with_no_secret_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreground: list[dict[str, Any]]
) -> None:
    """Issue 22: the daemon re-ran `up` with --join-key and --webhook on its command line."""
    args = _up_args(tmp_path / "state", "--join-key", JOIN_KEY, f"--webhook={WEBHOOK}")
    monkeypatch.setattr(subprocess, "Popen", _Started)
    monkeypatch.setattr(sys, "argv", ["pilotif", *args])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    command = " ".join(_Started.command)
    assert JOIN_KEY not in command and "s3cr3t-token" not in command
    assert "--join-key" not in command and "--webhook" not in command
    assert _Started.command[3:] == [*_up_args(tmp_path / "state"), "--foreground"]

    # The daemon's side: it reads them from its environment, and forgets them there.
    daemon_env = {name: _Started.env[name] for name in (JOIN_KEY_ENV, WEBHOOK_ENV)}
    for name, value in daemon_env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, _Started.command[3:])
    assert result.exit_code == 0, result.output
    assert foreground == [
        {
            "join_key": JOIN_KEY,
            "webhook": WEBHOOK,
            "environment": {JOIN_KEY_ENV: None, WEBHOOK_ENV: None},
        }
    ]


def test_a_secret_option_reads_file_colon_path(
    tmp_path: Path, foreground: list[dict[str, Any]]
) -> None:
    key_file, hook_file = tmp_path / "join.key", tmp_path / "webhook.url"
    key_file.write_text(JOIN_KEY + "\n")
    hook_file.write_text(WEBHOOK + "\n")
    args = _up_args(
        tmp_path / "state", f"--join-key=file:{key_file}", "--webhook", f"file:{hook_file}"
    )
    result = CliRunner().invoke(cli, [*args, "--foreground"])
    assert result.exit_code == 0, result.output
    assert (foreground[0]["join_key"], foreground[0]["webhook"]) == (JOIN_KEY, WEBHOOK)


def test_a_missing_secret_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pilotif",
            *_up_args(tmp_path / "s", "--join-key", f"file:{missing}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"pilotif: error: --join-key: cannot read {missing}: No such file or directory"
    ]


@pytest.mark.parametrize("how", ["env", "file"])
def test_the_registry_database_url_can_stay_off_the_command_line(tmp_path: Path, how: str) -> None:
    """The URL (with its password) from PILOTIF_DATABASE or file:PATH: the database is
    reached with it, and the error shows it with the password masked."""
    url = "postgresql://pilotif:hunter2@127.0.0.1:1/pilotif"
    env = dict(os.environ)
    args = ["registry", "admin", "key", "list"]
    if how == "env":
        env[DATABASE_ENV] = url
    else:
        (tmp_path / "db.url").write_text(url + "\n")
        args[2:2] = ["--database", f"file:{tmp_path / 'db.url'}"]
    result = subprocess.run(
        [sys.executable, "-m", "pilotif", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert result.returncode != 0
    assert "postgresql://pilotif:***@127.0.0.1:1/pilotif" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
