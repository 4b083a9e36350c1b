"""The bearer token that `pilotif mcp --http` requires: made with `secrets` on first use,
kept in the state dir with mode 0600 (written atomically, never read through a link),
printed by `pilotif mcp token` for the client's configuration, and checked in constant
time by pilotif.cli.mcp_server (this module needs no MCP SDK: the CLI imports it)."""

import secrets
from pathlib import Path
from typing import Final

from pilotif.util.files import StateFileError, read_state_file, write_private_file
from pilotif.util.paths import StatePaths

TOKEN_FILE: Final = "mcp.token"
TOKEN_BYTES: Final = 32
"""Random bytes in a token (256 bits; 43 characters of URL-safe base64)."""
MIN_TOKEN_CHARS: Final = 32
"""A token file holding less than this is refused rather than trusted."""
TOKEN_CLIENT_ID: Final = "pilotif-mcp-token"
"""The client a static token stands for in the SDK's AccessToken."""


def token_path(state_dir: Path) -> Path:
    """Where the token of the node whose daemon uses `state_dir` is kept."""
    return state_dir / TOKEN_FILE


def read_token(path: Path) -> str | None:
    """The token kept at `path`, None if there is none; StateFileError if the file is a
    link, cannot be read, or holds no token."""
    text = read_state_file(path)
    if text is None:
        return None
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise StateFileError(
            f"{path} holds no MCP token; `pilotif mcp token --rotate` writes a new one"
        )
    return token


def load_or_create_token(state_dir: Path, *, rotate: bool = False) -> str:
    """The MCP token of `state_dir`, made there first if there is none (or `rotate`)."""
    StatePaths(state_dir).create()
    path = token_path(state_dir)
    token = None if rotate else read_token(path)
    if token is None:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        write_private_file(path, token + "\n")
    return token
