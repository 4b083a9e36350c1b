"""What every group of `pilotif` commands shares: the one-line error with a code, the
`--json` and `--state-dir` options, printing a result as text or JSON (peer text made
safe for a terminal), and asking the running daemon."""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pilotif.cli.untrusted import visible_text
from pilotif.daemon.api import ControlError, request
from pilotif.net.hostport import HostPortError, parse_host_port
from pilotif.util.errors import CodedError
from pilotif.util.paths import STATE_DIR_ENV, StatePaths, default_state_dir

if TYPE_CHECKING:
    from pilotif.net.proxy import Proxy

F = TypeVar("F", bound=Callable[..., Any])
SECRET_FILE_PREFIX = "file:"
"""A secret option given as file:PATH reads the secret from that file (as Tailscale's
`--auth-key file:...`): it then never shows in /proc/PID/cmdline, which every user reads."""
DATABASE_ENV = "PILOTIF_DATABASE"
PROXY_ENV = "PILOTIF_PROXY"
"""Where `--proxy` may come from (`up`, `netcheck`)."""


class CliError(CodedError, click.ClickException):
    """A failure reported as one line, with a machine-readable code for --json."""

    def __init__(self, message: str, code: str = "error", hint: str = "") -> None:
        super().__init__(code, message, hint)

    @classmethod
    def of(cls, error: CodedError) -> "CliError":
        """Another part's refusal (the daemon's, a peer service's), as the CLI's."""
        return cls(str(error), error.code, error.hint)


def proxy_of(url: str | None) -> "Proxy | None":
    """The proxy of --proxy, else of HTTPS_PROXY (https_proxy), else none."""
    from pilotif.net.proxy import ProxyError, parse_proxy, proxy_from_environment

    try:
        return parse_proxy(url) if url else proxy_from_environment()
    except ProxyError as error:
        source = "--proxy" if url else "HTTPS_PROXY"
        raise CliError(f"{source}: {error}", "bad_input") from None


def host_port_option(option: str, text: str) -> tuple[str, int]:
    """HOST:PORT given to OPTION (an IPv6 host in brackets) as (host, port), or a clear error."""
    try:
        return parse_host_port(text)
    except HostPortError as error:
        raise CliError(f"{option} {error}", "bad_input") from None


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
DAEMON_ERRORS = ("not_running",)
"""What every command that asks the daemon may answer (it is not running)."""
SERVICE_ERRORS = (
    "not_trusted",
    "service_closed",
    "peer_unreachable",
    "service_failed",
    "internal_error",
)
"""What a command that reaches a peer's service may answer."""
REGISTRY_ERRORS = (*DAEMON_ERRORS, "unreachable", "peer_not_found", "ambiguous_peer", "no_request")
"""What a command that asks the registry (through the daemon) may answer."""
TASK_ERRORS = ("unknown_task", "bad_state")
ADMIN_ERRORS = ("no_registry", "no_access")
"""What `registry admin` may answer before it reads anything."""


def json_output(shape: str, errors: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Declare, next to a command, the shape of what it prints with --json and the codes
    of its errors: `pilotif context` reads them from here."""

    def declare(function: F) -> F:
        function.__dict__["json_output"] = shape
        function.__dict__["error_codes"] = ("bad_input", *errors)
        return function

    return declare


def terminal_safe(text: object) -> str:
    """Text a peer (or the registry) chose, made safe to print on a terminal as part of a
    line: every control character (ESC, CR, LF, C1...), format character (bidi controls,
    zero-width and tag characters), lone surrogate and line separator shows as a visible
    escape (\\x1b, \\u202e), so it can neither move the cursor, forge lines, hide
    characters nor reorder what is shown."""
    return visible_text(str(text), keep="")


def echo_result(as_json: bool, data: Any, text: str) -> None:
    """Print `data` as JSON with --json, else `text`."""
    click.echo(json.dumps(data, indent=2) if as_json else text)


def state_dir_option(function: F) -> F:
    """`--state-dir DIR` (env PILOTIF_STATE_DIR), on every command."""
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=STATE_DIR_ENV,
        default=default_state_dir,
        show_default="/var/lib/pilotif; not root: $XDG_STATE_HOME/pilotif, ~/.local/state/pilotif",
        help="Directory for the daemon's socket, pid file and log.",
    )(function)


def node_request(state_dir: Path, command: str, **arguments: Any) -> dict[str, Any]:
    """Send a node command to the daemon; a refusal becomes a CliError with its hint."""
    paths = StatePaths(state_dir.absolute())
    try:
        return request(paths.control_socket, command, **arguments)
    except ControlError as error:
        raise CliError.of(error) from None


def trusted_peer_address(state_dir: Path, peer: str) -> str:
    """The virtual IPv4 of a trusted peer named by hostname, address or key (asked of the
    daemon); CliError `not_trusted` if no trusted peer has that name."""
    wanted = peer.strip().lower().removesuffix(".pilot")
    for row in node_request(state_dir, "peers").get("peers", []):
        if wanted in (row.get("hostname"), row.get("ipv4"), row.get("ipv6"), row.get("public_key")):
            return str(row["ipv4"])
    raise CliError(
        f"{peer!r} is not a trusted peer",
        "not_trusted",
        "`pilotif peers` lists them; `pilotif handshake PEER` asks for trust",
    )


def service_address(state_dir: Path, peer: str) -> str:
    """A trusted peer's virtual IPv4, or this node's own for its own hostname or address."""
    node = node_request(state_dir, "status").get("status", {}).get("node") or {}
    if peer.strip().lower().removesuffix(".pilot") in (node.get("hostname"), node.get("ipv4")):
        return str(node["ipv4"])
    return trusted_peer_address(state_dir, peer)


def text_or_file(text: str | None, text_file: Path | None) -> str:
    """A command's TEXT argument or the text of its --file (- for stdin): exactly one."""
    if (text is None) == (text_file is None):
        raise CliError("give TEXT or --file FILE (not both)", "bad_input")
    if text is not None:
        return text
    assert text_file is not None
    try:
        return sys.stdin.read() if str(text_file) == "-" else text_file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"--file: cannot read {text_file}: {error}", "bad_input") from None


def secret_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback of an option that carries a secret: the value as given, or the content of
    the file after file:. (A command that runs on deletes its environment variable with
    `forget_secrets`.)"""
    if value is None or not value.startswith(SECRET_FILE_PREFIX):
        return value
    option = param.opts[0] if param.opts else str(param.name)
    path = Path(value.removeprefix(SECRET_FILE_PREFIX))
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise CliError(f"{option}: cannot read {path}: {reason}", "bad_input") from None
    if not text:
        raise CliError(f"{option}: {path} is empty", "bad_input")
    return text


def forget_secrets(*names: str) -> None:
    """Delete these environment variables from this process's environment once read, so
    that no child it starts (resolvectl, a hook) inherits them."""
    for name in names:
        os.environ.pop(name, None)


def _database_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from pilotif.registry.database import is_postgresql

    value = secret_option(ctx, param, value)
    if value is not None and not is_postgresql(value):
        raise click.BadParameter(
            "give a postgresql://USER@HOST[:PORT]/NAME URL (without it the registry uses"
            " SQLite in its state dir)"
        )
    return value


database_option = click.option(
    "--database",
    metavar="URL",
    envvar=DATABASE_ENV,
    callback=_database_url,
    help="A PostgreSQL database (postgresql://USER@HOST/NAME) instead of SQLite in the"
    " state dir; registry replicas share one. With a password, give file:PATH (a file"
    f" holding the URL) or env {DATABASE_ENV}: a command line is public.",
)
