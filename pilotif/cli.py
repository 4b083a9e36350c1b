"""`pilotif ...`: the command line. Every error is one line that says what to do next."""

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pilotif.config import ConfigError, InterfaceConfig, load_config
from pilotif.control import ControlError, request
from pilotif.keys import InvalidKeyError, decode_key, encode_key
from pilotif.logs import log_event, setup_logging
from pilotif.overlay.crypto import generate_private_key, public_key
from pilotif.paths import DEFAULT_STATE_DIR, STATE_DIR_ENV, StatePaths

READY_FD_ENV = "PILOTIF_READY_FD"
DEFAULT_INTERFACE = "pilot0"
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
_POLL_S = 0.05
_INTERFACE_NAME = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A failure reported as one line, with a machine-readable code for --json."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


def state_dir_option(function: F) -> F:
    """`--state-dir DIR` (env PILOTIF_STATE_DIR), on every command."""
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=STATE_DIR_ENV,
        default=DEFAULT_STATE_DIR,
        show_default=True,
        help="Directory for the daemon's socket, pid file and log.",
    )(function)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pilotif")
def cli() -> None:
    """pilotif: a permanent virtual IP for every agent, over WireGuard."""


def _interface_name(name: str | None, config_path: Path) -> str:
    if name is None:
        stem = config_path.stem
        return stem if _INTERFACE_NAME.match(stem) else DEFAULT_INTERFACE
    if not _INTERFACE_NAME.match(name):
        raise CliError(
            f"invalid interface name {name!r}: use 1-15 letters, digits or _=+.-", "bad_input"
        )
    return name


def _daemon_running(paths: StatePaths) -> bool:
    try:
        request(paths.control_socket, "status")
    except ControlError:
        return False
    return True


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A wg-quick style file: [Interface] and [Peer] sections.",
)
@click.option("--interface", help="Name of the TUN interface (default: the config's file name).")
@click.option("--foreground", is_flag=True, help="Stay in the foreground (systemd, docker).")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@state_dir_option
def up(
    config_path: Path, interface: str | None, foreground: bool, log_format: str, state_dir: Path
) -> None:
    """Bring the interface up; returns once it is up, the daemon runs on in the background."""
    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise CliError(str(error), "bad_config") from None
    name = _interface_name(interface, config_path)
    paths = StatePaths(state_dir.absolute())
    if _daemon_running(paths):
        raise CliError(
            f"pilotif is already running with state dir {paths.root}; "
            "run `pilotif down` first or use another --state-dir",
            "already_running",
        )
    try:
        paths.create()
    except OSError as error:
        raise CliError(f"cannot create state dir {paths.root}: {error.strerror}") from None
    if foreground:
        _run_foreground(config, name, paths, log_format)
    else:
        _start_background(config_path.absolute(), name, paths, log_format)


def _run_foreground(
    config: InterfaceConfig, interface: str, paths: StatePaths, log_format: str
) -> None:
    from pilotif.daemon import Daemon, StartupError

    setup_logging(as_json=log_format == "json")
    ready_fd = int(os.environ.pop(READY_FD_ENV)) if READY_FD_ENV in os.environ else None
    try:
        Daemon(config, interface, paths).run(ready_fd)
    except StartupError as error:
        log_event("startup_failed", error=str(error))
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"error: {error}\n".encode())
        raise CliError(str(error), "startup_failed") from None


def _start_background(
    config_path: Path, interface: str, paths: StatePaths, log_format: str
) -> None:
    read_end, write_end = os.pipe()
    command = [
        sys.executable,
        "-m",
        "pilotif",
        "up",
        "--foreground",
        "--config",
        str(config_path),
        "--interface",
        interface,
        "--state-dir",
        str(paths.root),
        "--log-format",
        log_format,
    ]
    with open(paths.log_file, "ab") as log:
        os.chmod(paths.log_file, 0o600)
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_end,),
            env={**os.environ, READY_FD_ENV: str(write_end)},
            start_new_session=True,
        )
    os.close(write_end)
    message = _read_readiness(read_end)
    if message == "ready":
        click.echo(f"pilotif is up on {interface} (pid {process.pid}); log: {paths.log_file}")
        return
    if process.poll() is None and not message:
        process.terminate()
    raise CliError(
        message.removeprefix("error: ") or f"the daemon did not start; see {paths.log_file}",
        "startup_failed",
    )


def _read_readiness(fd: int) -> str:
    """The daemon's first line on the readiness pipe ('' if it closed or timed out)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    data = b""
    os.set_blocking(fd, False)
    try:
        while b"\n" not in data and time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(_POLL_S)
                continue
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


@cli.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop the daemon and remove its interface."""
    paths = StatePaths(state_dir.absolute())
    try:
        status = request(paths.control_socket, "status")["status"]
        request(paths.control_socket, "down")
    except ControlError as error:
        raise CliError(str(error), "not_running") from None
    pid = int(status["pid"])
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            click.echo(f"pilotif is down ({status['interface']} removed)")
            return
        time.sleep(_POLL_S)
    raise CliError(f"the daemon (pid {pid}) did not stop in {SHUTDOWN_TIMEOUT_S:.0f} s")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@state_dir_option
def status(as_json: bool, state_dir: Path) -> None:
    """Show the interface, its peers and the drop counters."""
    paths = StatePaths(state_dir.absolute())
    try:
        state = request(paths.control_socket, "status")["status"]
    except ControlError as error:
        raise CliError(str(error), "not_running") from None
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(_format_status(state))


def _format_status(state: dict[str, Any]) -> str:
    lines = [
        f"interface: {state['interface']}",
        f"  public key: {state['public_key']}",
        f"  listening port: {state['listen_port']}",
        f"  addresses: {', '.join(state['addresses'])}",
        f"  mtu: {state['mtu']}",
    ]
    for peer in state["peers"]:
        lines += ["", f"peer: {peer['public_key']}"]
        if peer["endpoint"]:
            lines.append(f"  endpoint: {peer['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(peer['allowed_ips']) or '(none)'}")
        if peer["latest_handshake"] is not None:
            ago = max(0, int(time.time() - peer["latest_handshake"]))
            lines.append(f"  latest handshake: {ago} seconds ago")
        lines.append(f"  transfer: {peer['rx_bytes']} B received, {peer['tx_bytes']} B sent")
        if peer["persistent_keepalive"]:
            lines.append(f"  persistent keepalive: every {peer['persistent_keepalive']} seconds")
    drops = {reason: count for reason, count in state["drops"].items() if count}
    lines += ["", "drops: " + (", ".join(f"{r}={c}" for r, c in drops.items()) or "none")]
    return "\n".join(lines)


@cli.command()
def genkey() -> None:
    """Print a new private key (base64), as `wg genkey` does."""
    click.echo(encode_key(generate_private_key()))


@cli.command()
def pubkey() -> None:
    """Read a private key on stdin and print its public key, as `wg pubkey` does."""
    try:
        private = decode_key(sys.stdin.read())
    except InvalidKeyError as error:
        raise CliError(f"stdin: {error}", "bad_input") from None
    click.echo(encode_key(public_key(private)))


@cli.command()
def demo() -> None:
    """Build a two-namespace lab, run two pilotif daemons and show them talking (root)."""
    from pilotif.lab.demo import run_demo

    code = run_demo()
    if code:
        raise click.exceptions.Exit(code)


def main() -> None:
    """Entry point: run the CLI; print every error as one line."""
    as_json = "--json" in sys.argv[1:]
    try:
        code = cli.main(prog_name="pilotif", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        code_name = error.code if isinstance(error, CliError) else "bad_input"
        message = error.format_message()
        if isinstance(error, click.UsageError) and error.ctx is not None:
            message += f" (see `{error.ctx.command_path} --help`)"
        if as_json:
            click.echo(json.dumps({"error": message, "code": code_name}))
        click.echo(f"pilotif: error: {message}", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
