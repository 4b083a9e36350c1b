"""The local control API: one JSON request and one JSON reply per connection, over a
Unix socket that only root can open (mode 0600, and the peer's uid is checked)."""

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Request = dict[str, Any]
Reply = dict[str, Any]
Handler = Callable[[Request], Awaitable[Reply]]

_SOCKET_MODE = 0o600
_MAX_REQUEST_BYTES = 65536
_CLIENT_TIMEOUT_S = 10.0
_UCRED = struct.Struct("3i")


class ControlError(Exception):
    """The daemon could not be reached or refused the request."""

    def __init__(self, message: str, code: str = "not_running", hint: str = "") -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.code = code
        self.hint = hint


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(creds)[1])


async def serve_control(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """Listen on `path` and answer each request with `handler`."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if _peer_uid(writer) != 0:
                reply: Reply = {"ok": False, "error": "only root may control pilotif"}
            else:
                line = await reader.readline()
                try:
                    request = json.loads(line[:_MAX_REQUEST_BYTES])
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError:
                    reply = {"ok": False, "error": "malformed control request"}
                else:
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


def request(path: Path, command: str, **arguments: Any) -> Reply:
    """Send one request to the daemon at `path` and return its reply."""
    message = json.dumps({"command": command, **arguments}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_CLIENT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(
                f"pilotif is not running (no control socket at {path}); start it with `pilotif up`"
            ) from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run this as root") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"pilotif is not running (stale control socket at {path}); "
                "start it with `pilotif up`"
            ) from None
        sock.sendall(message)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    try:
        reply: Reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError("the daemon closed the connection without a reply") from None
    if not reply.get("ok", False):
        raise ControlError(
            str(reply.get("error", "the daemon refused the request")),
            str(reply.get("code", "error")),
            str(reply.get("hint", "")),
        )
    return reply
