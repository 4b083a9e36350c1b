"""What the CLI asks a userspace node for over its control socket, since it cannot reach
the overlay through the kernel: `dial` (the control connection becomes a byte pipe to a
peer's port: `connect`, `send-file`, `publish`, `bench`, the MCP tools), `ping` (ICMP echo
from the node's stack) and `listen` (lines peers send to a port, one JSON line each).
Only the daemon's own user reaches the control socket."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from typing import Any, Final

from pilotif.userspace.names import Resolve
from pilotif.userspace.splice import splice
from pilotif.userspace.stack import STREAM_LIMIT_BYTES, UserspaceStack

MAX_TIMEOUT_S: Final = 120.0
DEFAULT_TIMEOUT_S: Final = 10.0
MAX_PORT: Final = 65535

PipeHandler = Callable[
    [dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]
"""A control command that takes the connection over (as pilotif.daemon.api's)."""


def _timeout(request: dict[str, Any]) -> float:
    value = request.get("timeout", DEFAULT_TIMEOUT_S)
    if not isinstance(value, int | float) or value <= 0:
        return DEFAULT_TIMEOUT_S
    return min(float(value), MAX_TIMEOUT_S)


async def _answer(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    writer.write(json.dumps(reply).encode() + b"\n")
    await writer.drain()


def _refusal(code: str, error: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": error}


def control_pipes(stack: UserspaceStack, resolve: Resolve) -> dict[str, PipeHandler]:
    """The control socket's pipe commands of a userspace node."""

    async def dial(
        request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, port = str(request.get("address", "")), request.get("port")
        address = resolve(host)
        if not isinstance(port, int) or not 1 <= port <= MAX_PORT:
            await _answer(writer, _refusal("bad_input", "dial needs a port (1-65535)"))
            return
        if address is None:
            await _answer(writer, _refusal("peer_not_trusted", f"{host!r} is not a trusted peer"))
            return
        try:
            async with asyncio.timeout(_timeout(request)):
                remote = await stack.open_connection(address, port, limit=STREAM_LIMIT_BYTES)
        except ConnectionRefusedError:
            await _answer(
                writer, _refusal("service_closed", f"nothing listens on {address}:{port}")
            )
            return
        except (OSError, TimeoutError) as error:
            reason = str(error) or "no answer"
            await _answer(writer, _refusal("peer_unreachable", f"{address}:{port}: {reason}"))
            return
        await _answer(writer, {"ok": True})
        await splice((reader, writer), remote)

    async def ping(
        request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        address = resolve(str(request.get("address", "")))
        if not isinstance(address, IPv4Address):
            await _answer(writer, _refusal("peer_not_trusted", "ping needs a trusted peer"))
            return
        rtt = await stack.ping(address, _timeout(request))
        await _answer(writer, {"ok": True, "rtt_ms": None if rtt is None else round(rtt, 3)})

    async def listen(
        request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Until the client hangs up: each line peers send to `port`, as a JSON line
        (`pilotif listen`)."""
        port = request.get("port")
        if not isinstance(port, int) or not 1 <= port <= MAX_PORT:
            await _answer(writer, _refusal("bad_input", "listen needs a port (1-65535)"))
            return

        async def lines(peer_reader: asyncio.StreamReader, peer: asyncio.StreamWriter) -> None:
            source = str(peer.get_extra_info("peername")[0])
            try:
                while line := await peer_reader.readline():
                    text = line.decode(errors="replace").rstrip("\n")
                    await _answer(writer, {"peer": source, "port": port, "data": text})
            except (ConnectionError, OSError, ValueError):
                pass  # the peer's connection ended (or a line beyond the limit)
            finally:
                peer.close()

        try:
            server = await stack.start_server(lines, port)
        except ValueError:
            await _answer(writer, _refusal("bad_input", f"port {port} is served already"))
            return
        try:
            await _answer(writer, {"ok": True})
            await reader.read()  # the client hangs up
        finally:
            server.close()

    return {"dial": dial, "ping": ping, "listen": listen}
