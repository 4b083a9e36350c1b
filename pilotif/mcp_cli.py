"""`pilotif mcp`: serve this node's operations as MCP tools, over stdio or streamable HTTP."""

from pathlib import Path

import click

from pilotif.cli_common import CliError, host_port_option, state_dir_option


@click.command()
@click.option("--http", "http_at", help="Serve streamable HTTP at HOST:PORT instead of stdio.")
@state_dir_option
def mcp(http_at: str | None, state_dir: Path) -> None:
    """Serve this node as MCP tools (status, peers, find, trust, messages, TCP requests)
    for LLM agents: over stdio, as MCP clients start it, or streamable HTTP."""
    try:
        from pilotif.mcp_server import build_server
    except ImportError as error:
        raise CliError(
            f"the MCP SDK is not installed ({error.name})",
            "missing_dependency",
            "pip install 'pilotif[mcp]'",
        ) from None
    server = build_server(state_dir.absolute())
    if http_at is None:
        server.run("stdio")
        return
    host, port = host_port_option("--http", http_at)
    server.run("streamable-http", host=host, port=port)
