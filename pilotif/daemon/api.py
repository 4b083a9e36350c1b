"""The local control API: one JSON request and one JSON reply per connection, over a
Unix socket that only the daemon's user can open (mode 0600, and the peer's uid is
checked: root, or the user a userspace daemon runs as).

A streaming command (`events`) answers `{"ok": true}` and then one JSON line per item
for as long as the client keeps the connection open.
"""

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pilotif.util.errors import CodedError

Request = dict[str, Any]
Reply = dict[str, Any]
Handler = Callable[[Request], Awaitable[Reply]]
StreamHandler = Callable[[Request], AsyncGenerator[Reply, None]]
PipeHandler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""A command that takes the connection over (`dial`: it becomes a byte pipe to a peer)."""

_SOCKET_MODE = 0o600
_MAX_REQUEST_BYTES = 65536
_CLIENT_TIMEOUT_S = 10.0
_UCRED = struct.Struct("3i")


class ControlError(CodedError):
    """The daemon could not be reached or refused the request."""

    def __init__(self, message: str, code: str = "not_running", hint: str = "") -> None:
        super().__init__(code, f"{message}; {hint}" if hint else message, hint)


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(creds)[1])


async def _stream(
    items: AsyncGenerator[Reply, None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Write `{"ok": true}`, then each item as a line, until the client hangs up."""

    async def pump() -> None:
        writer.write(json.dumps({"ok": True}).encode() + b"\n")
        await writer.drain()
        async for item in items:
            writer.write(json.dumps(item).encode() + b"\n")
            await writer.drain()

    pumping = asyncio.ensure_future(pump())
    hang_up = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait((pumping, hang_up), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The daemon is stopping: the stream just ends. (A connection handler left
        # cancelled is reported as an error by asyncio's stream server in 3.11.)
        pass
    finally:
        for task in (pumping, hang_up):
            task.cancel()
        await asyncio.gather(pumping, hang_up, return_exceptions=True)
        await items.aclose()


async def serve_control(
    path: Path,
    handler: Handler,
    streams: Mapping[str, StreamHandler] | None = None,
    pipes: Mapping[str, PipeHandler] | None = None,
) -> asyncio.AbstractServer:
    """Listen on `path` and answer each request with `handler`, or with the stream of
    `streams[command]` for a streaming command, or hand the connection to
    `pipes[command]`."""
    streams = streams or {}
    pipes = pipes or {}

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if _peer_uid(writer) not in (0, os.geteuid()):
                reply: Reply = {
                    "ok": False,
                    "error": "only root or the daemon's user may control pilotif",
                }
            else:
                line = await reader.readline()
                try:
                    request = json.loads(line[:_MAX_REQUEST_BYTES])
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError:
                    reply = {"ok": False, "error": "malformed control request"}
                else:
                    stream = streams.get(str(request.get("command")))
                    taker = pipes.get(str(request.get("command")))
                    if taker is not None:
                        await taker(request, reader, writer)
                        return
                    if stream is not None:
                        await _stream(stream(request), reader, writer)
                        return
                    reply = await handler(request)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_connection, path=str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, _SOCKET_MODE)
    return server


def _connect(path: Path, command: str, arguments: dict[str, Any]) -> socket.socket:
    """A connected socket to the daemon at `path` with the request sent."""
    message = json.dumps({"command": command, **arguments}).encode() + b"\n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(_CLIENT_TIMEOUT_S)
    try:
        sock.connect(str(path))
        sock.sendall(message)
    except FileNotFoundError:
        sock.close()
        raise ControlError(
            f"pilotif is not running (no control socket at {path})",
            "not_running",
            "start it with `pilotif up`, or pass the --state-dir it runs with",
        ) from None
    except PermissionError:
        sock.close()
        raise ControlError(
            f"permission denied on {path}",
            "permission_denied",
            "run this as root, or as the user the daemon runs as",
        ) from None
    except ConnectionRefusedError:
        sock.close()
        raise ControlError(
            f"pilotif is not running (stale control socket at {path})",
            "not_running",
            "start it with `pilotif up`",
        ) from None
    return sock


def _checked(data: bytes) -> Reply:
    try:
        reply: Reply = json.loads(data)
    except ValueError:
        raise ControlError(
            "the daemon closed the connection without a reply",
            "no_reply",
            "see the daemon's log in the state dir",
        ) from None
    if not reply.get("ok", False):
        raise ControlError(
            str(reply.get("error", "the daemon refused the request")),
            str(reply.get("code", "error")),
            str(reply.get("hint", "")),
        )
    return reply


def request(path: Path, command: str, **arguments: Any) -> Reply:
    """Send one request to the daemon at `path` and return its reply."""
    with _connect(path, command, arguments) as sock:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return _checked(b"".join(chunks))


def pipe(path: Path, command: str, timeout_s: float, **arguments: Any) -> socket.socket:
    """Send a request that turns the connection into a byte pipe (`dial`); once the
    daemon's reply line says ok, the socket is the pipe (blocking, no timeout)."""
    sock = _connect(path, command, arguments)
    try:
        sock.settimeout(timeout_s)
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = sock.recv(1)  # byte by byte: what follows the line is the peer's
            if not byte:
                break
            line += byte
        _checked(bytes(line))
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def stream(
    path: Path, command: str, *, on_open: Callable[[], None] | None = None, **arguments: Any
) -> Iterator[Reply]:
    """Send a streaming request and yield each item the daemon writes, as it comes,
    until the daemon closes the connection; `on_open` is called once the daemon accepted."""
    with _connect(path, command, arguments) as sock:
        lines = sock.makefile("rb")
        _checked(lines.readline())
        sock.settimeout(None)
        if on_open is not None:
            on_open()
        for line in lines:
            with contextlib.suppress(ValueError):
                yield json.loads(line)
