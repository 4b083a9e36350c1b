"""`pilotif mcp`: serve this node's operations as MCP tools, over stdio or streamable HTTP
(bearer token, Host and Origin checked, loopback unless --allow-remote); `pilotif mcp
token` prints (or rotates) the token an HTTP client sends."""

from pathlib import Path

import click

from pilotif.cli.common import (
    CliError,
    echo_result,
    host_port_option,
    json_option,
    json_output,
    state_dir_option,
)
from pilotif.cli.mcp_token import load_or_create_token, token_path
from pilotif.util.files import StateFileError


def _sdk_missing(error: ImportError) -> CliError:
    return CliError(
        f"the MCP SDK is not installed ({error.name})",
        "missing_dependency",
        "pip install 'pilotif[mcp]'",
    )


def _token(state_dir: Path, rotate: bool = False) -> str:
    try:
        return load_or_create_token(state_dir, rotate=rotate)
    except (StateFileError, OSError) as error:
        raise CliError(str(error), "bad_state_dir") from None


@click.group(invoke_without_command=True)
@click.option("--http", "http_at", help="Serve streamable HTTP at HOST:PORT instead of stdio.")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Let --http listen on an address other than loopback (put TLS in front of it).",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Another Host (and Origin) an HTTP client may name, e.g. a proxy's; repeatable.",
)
@click.option(
    "--files-from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The directory send_file may read from (without it, send_file refuses).",
)
@state_dir_option
@click.pass_context
def mcp(
    ctx: click.Context,
    http_at: str | None,
    allow_remote: bool,
    allow_hosts: tuple[str, ...],
    files_from: Path | None,
    state_dir: Path,
) -> None:
    """Serve this node as MCP tools (status, peers, find, trust, messages, files, events,
    tasks, TCP requests) for LLM agents: over stdio, as MCP clients start it, or streamable
    HTTP at http://HOST:PORT/mcp with the bearer token of `pilotif mcp token`."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        from pilotif.cli.mcp_files import FileRefused, FilesFrom
        from pilotif.cli.mcp_server import build_server, is_loopback, is_unspecified, serve_http
    except ImportError as error:
        raise _sdk_missing(error) from None
    try:
        files = None if files_from is None else FilesFrom(files_from)
    except FileRefused as error:
        raise CliError(str(error), "bad_input") from None
    state_dir = state_dir.absolute()
    if http_at is None:
        build_server(state_dir, files).run("stdio")
        return
    host, port = host_port_option("--http", http_at)
    if not is_loopback(host) and not allow_remote:
        raise CliError(
            f"--http {http_at} is not a loopback address: add --allow-remote to serve the "
            "node's tools there anyway (with TLS in front: the token travels in each request)",
            "bad_input",
            "--allow-remote, or --http 127.0.0.1:PORT",
        )
    if is_unspecified(host) and not allow_hosts:
        raise CliError(
            f"--http {http_at} listens on every address: add --allow-host NAME for each name "
            "or address clients put in the URL (requests naming another host are refused)",
            "bad_input",
            "--allow-host NAME",
        )
    _token(state_dir)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    click.echo(
        f"pilotif mcp: {url}/mcp; clients send `Authorization: Bearer TOKEN`, TOKEN from "
        f"`pilotif mcp token --state-dir {state_dir}`",
        err=True,
    )
    serve_http(build_server(state_dir, files, http_url=url), host, port, allow_hosts)


@mcp.command("token")
@click.option("--rotate", is_flag=True, help="Replace the token: clients with the old one stop.")
@json_option
@state_dir_option
@click.pass_context
@json_output('{"token", "file", "rotated"}', ("bad_state_dir",))
def mcp_token(ctx: click.Context, rotate: bool, as_json: bool, state_dir: Path) -> None:
    """Print the bearer token `pilotif mcp --http` requires (made on first use, kept 0600
    in the state dir): an MCP client sends it as `Authorization: Bearer TOKEN`."""
    parent = ctx.parent
    if (
        parent is not None
        and ctx.get_parameter_source("state_dir") is click.core.ParameterSource.DEFAULT
    ):
        state_dir = parent.params["state_dir"]
    state_dir = state_dir.absolute()
    token = _token(state_dir, rotate)
    echo_result(
        as_json,
        {"token": token, "file": str(token_path(state_dir)), "rotated": rotate},
        token,
    )
