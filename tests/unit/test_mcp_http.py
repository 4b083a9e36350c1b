"""`pilotif mcp --http` as a client on this machine meets it: the server runs as its own
process on loopback (no daemon: the checks come first), and the MCP SDK's own streamable
HTTP client talks to it. Without the token, or with a wrong one, initialize is refused
(401); with it the tools come, annotated; a request naming another Host or coming from
another Origin (DNS rebinding) is refused; a non-loopback bind needs --allow-remote; and
send_file reads nothing outside --files-from, through `..`, an absolute path or a link."""

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

ADDRESS = "127.0.0.2"
"""Loopback, but not one of the three binds the SDK guards itself: the Host and Origin
checks here are pilotif's."""
STARTUP_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 20.0
SECRET = "the node's private key\n"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def pilotif(*args: str, timeout_s: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilotif", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    state_dir: Path
    outbox: Path
    outside: Path

    def token(self) -> str:
        """The token as the server keeps it (test_the_token_command_prints_it shows that
        `pilotif mcp token` prints the same)."""
        return (self.state_dir / "mcp.token").read_text().strip()

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`pilotif mcp --http 127.0.0.2:PORT --files-from OUTBOX`, with a secret beside the
    outbox and the ways to reach it from inside: `..`, a link to it, a link to its dir."""
    root = tmp_path_factory.mktemp("mcp")
    state_dir, outbox, outside = root / "state", root / "outbox", root / "outside"
    outbox.mkdir()
    outside.mkdir()
    (outside / "identity.key").write_text(SECRET)
    (outbox / "report.txt").write_text("a report\n")
    (outbox / "key-link").symlink_to(outside / "identity.key")
    (outbox / "dir-link").symlink_to(outside)
    port = _free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "pilotif", "mcp", "--http", f"{ADDRESS}:{port}"),
            *("--state-dir", str(state_dir), "--files-from", str(outbox)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / "server.log").open("w"),
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "pilotif mcp --http did not listen"
            try:
                socket.create_connection((ADDRESS, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield Server(f"http://{ADDRESS}:{port}/mcp", port, state_dir, outbox, outside)
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _with_session(url: str, headers: dict[str, str], calls: list[tuple[str, Any]]) -> Any:
    """Initialize a session with the SDK's client, list the tools, and call each of
    `calls`; returns (tools by name, results)."""
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        results = [await session.call_tool(name, arguments) for name, arguments in calls]
        return tools, results


def session(server: Server, headers: dict[str, str], *calls: tuple[str, Any]) -> Any:
    return asyncio.run(
        asyncio.wait_for(_with_session(server.url, headers, list(calls)), CALL_TIMEOUT_S)
    )


def _messages(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return " ".join(_messages(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"


def refusal(server: Server, headers: dict[str, str]) -> str:
    """What the SDK's client raises when the server refuses its session ("" if it did
    not): the SDK wraps its MCPError in an exception group."""
    try:
        session(server, headers)
    except Exception as error:
        return _messages(error)
    return ""


def raw_initialize(server: Server, **headers: str) -> httpx2.Response:
    """An initialize POST with exactly these headers (beyond the MCP ones)."""
    return httpx2.post(
        server.url, json=INITIALIZE, headers={**MCP_HEADERS, **headers}, timeout=CALL_TIMEOUT_S
    )


def test_initialize_without_the_token_is_refused(server: Server) -> None:
    assert "error response" in refusal(server, {})
    refused = raw_initialize(server)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")


def test_initialize_with_a_wrong_token_is_refused(server: Server) -> None:
    token = server.token()
    wrong = token[:-1] + ("B" if token.endswith("A") else "A")
    assert "error response" in refusal(server, {"Authorization": f"Bearer {wrong}"})
    assert raw_initialize(server, Authorization=f"Bearer {wrong}").status_code == 401


def test_the_token_opens_a_session_whose_dangerous_tools_say_so(server: Server) -> None:
    tools, _ = session(server, server.bearer())

    for name in ("approve", "reject", "handshake", "send_file", "request"):
        hints = tools[name].annotations
        assert (hints.read_only_hint, hints.destructive_hint, hints.open_world_hint) == (
            False,
            True,
            True,
        ), name
    for name in ("status", "peers", "inbox", "task_list", "pending"):
        assert tools[name].annotations.read_only_hint is True, name
    assert raw_initialize(server, **server.bearer()).status_code == 200


def test_a_rotated_token_shuts_out_the_old_one(server: Server) -> None:
    old = server.token()
    rotated = pilotif("mcp", "token", "--rotate", "--state-dir", str(server.state_dir))

    assert rotated.returncode == 0 and rotated.stdout.strip() != old
    assert raw_initialize(server, Authorization=f"Bearer {old}").status_code == 401
    assert raw_initialize(server, **server.bearer()).status_code == 200


def test_the_token_command_prints_it_from_a_private_file(server: Server) -> None:
    result = pilotif("mcp", "token", "--json", "--state-dir", str(server.state_dir))
    path = server.state_dir / "mcp.token"

    assert json.loads(result.stdout) == {
        "token": server.token(),
        "file": str(path),
        "rotated": False,
    }
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert stat.S_ISREG(path.lstat().st_mode) and path.stat().st_uid == os.geteuid()


def test_a_request_naming_another_host_is_refused(server: Server) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to this address."""
    token = server.bearer()
    rebound = raw_initialize(server, Host=f"evil.example:{server.port}", **token)
    assert rebound.status_code == 421
    assert raw_initialize(server, Host=f"localhost:{server.port}", **token).status_code == 200


def test_a_request_from_another_origin_is_refused(server: Server) -> None:
    token = server.bearer()
    assert raw_initialize(server, Origin="http://evil.example", **token).status_code == 403
    assert "error response" in refusal(server, {**token, "Origin": "http://evil.example"})
    own = f"http://{ADDRESS}:{server.port}"
    assert raw_initialize(server, Origin=own, **token).status_code == 200


def test_a_non_loopback_bind_needs_allow_remote(tmp_path: Path) -> None:
    # 198.18.0.1 is on no interface here: without the refusal the bind itself fails.
    result = pilotif("mcp", "--http", "198.18.0.1:8765", "--state-dir", str(tmp_path))
    assert result.returncode != 0
    assert "--allow-remote" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "mcp.token").exists()


def test_a_bind_to_every_address_needs_the_names_clients_use(tmp_path: Path) -> None:
    """Without --allow-host, no Host header could be checked against the bind."""
    port = str(_free_port())
    result = pilotif(
        "mcp", "--http", f"0.0.0.0:{port}", "--allow-remote", "--state-dir", str(tmp_path)
    )
    assert result.returncode != 0
    assert "--allow-host" in result.stderr and len(result.stderr.splitlines()) == 1


def test_send_file_reads_nothing_outside_files_from(server: Server) -> None:
    escapes = [
        "../outside/identity.key",
        str(server.outside / "identity.key"),
        "key-link",
        "dir-link/identity.key",
        str(server.outbox / ".." / "outside" / "identity.key"),
    ]
    calls = [("send_file", {"peer": "beta", "path": path}) for path in escapes]
    _, results = session(
        server, server.bearer(), *calls, ("send_file", {"peer": "beta", "path": "report.txt"})
    )

    *refused, inside = results
    for path, result in zip(escapes, refused, strict=True):
        assert result.is_error and "[code: not_allowed]" in result.content[0].text, path
    # A file inside gets past the check, to the daemon (not running here).
    assert inside.is_error and "[code: not_running]" in inside.content[0].text
