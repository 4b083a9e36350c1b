"""`pilotif mcp`: the node as Model Context Protocol tools, for LLM agents.

Built on the official `mcp` SDK (`MCPServer`), over stdio (an MCP client starts
`pilotif mcp` itself) or streamable HTTP (`--http HOST:PORT`). Every tool asks the local
daemon through its control socket, as the CLI does; a refusal becomes an MCP tool error
whose text says what went wrong, what to do, and its code. docs/AGENTS.md shows how to add
it to an MCP client.
"""

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from pilotif.cli_common import CliError, node_request, service_address, trusted_peer_address
from pilotif.services import peer_client
from pilotif.services.client import ServiceError

MAX_REPLY_BYTES: Final = 64 * 1024
MAX_REQUEST_S: Final = 30.0
MAX_EVENTS: Final = 100
INSTRUCTIONS: Final = """\
pilotif gives this machine a permanent virtual IP on an overlay network of agents.
Peers are other agents this node trusts; reach them by hostname (NAME or NAME.pilot),
virtual IP or key. Trust is mutual: `handshake` asks, the other side `approve`s. Use
`find` to discover registered agents, `send`/`inbox` for messages, and `request` to talk
TCP to a service on a trusted peer."""


def _tool_error(error: CliError) -> ToolError:
    message = error.format_message()
    hint = f" ({error.hint})" if error.hint and error.hint not in message else ""
    return ToolError(f"{message}{hint} [code: {error.code}]")


def _ask(state_dir: Path, command: str, **arguments: Any) -> dict[str, Any]:
    try:
        return node_request(state_dir, command, **arguments)
    except CliError as error:
        raise _tool_error(error) from None


def _peer_address(state_dir: Path, peer: str) -> str:
    try:
        return trusted_peer_address(state_dir, peer)
    except CliError as error:
        raise _tool_error(error) from None


def build_server(state_dir: Path) -> MCPServer:
    """The MCP server of the node whose daemon uses `state_dir`."""
    server: MCPServer = MCPServer(name="pilotif", instructions=INSTRUCTIONS)

    @server.tool()
    def status() -> dict[str, Any]:
        """This node: hostname, virtual addresses, whether the registry answers, the
        interface and its peers with their traffic."""
        reply: dict[str, Any] = _ask(state_dir, "status")["status"]
        return reply

    @server.tool()
    def peers() -> list[dict[str, Any]]:
        """The trusted peers: hostname, virtual IPv4/IPv6, path (direct or relay),
        last handshake and traffic. Only these can be reached."""
        rows: list[dict[str, Any]] = _ask(state_dir, "peers").get("peers", [])
        return rows

    @server.tool()
    def find(query: str) -> list[dict[str, Any]]:
        """Registered agents matching a hostname, virtual IP, key, or `tag:NAME`
        (never their network endpoints). Finding an agent does not let you reach it:
        ask it for trust with `handshake`."""
        nodes: list[dict[str, Any]] = _ask(state_dir, "find", query=query).get("nodes", [])
        return nodes

    @server.tool()
    def handshake(peer: str, message: str = "") -> dict[str, Any]:
        """Ask the agent `peer` for mutual trust, with an optional note. The state is
        `trusted` at once if it had asked us too, else `pending` until it approves."""
        return _ask(state_dir, "handshake", peer=peer, message=message)

    @server.tool()
    def pending() -> dict[str, Any]:
        """Trust requests waiting for this node (`incoming`, with their notes) and the
        ones this node sent that are not answered yet (`outgoing`)."""
        return _ask(state_dir, "pending")

    @server.tool()
    def approve(peer: str) -> dict[str, Any]:
        """Approve the trust request of `peer` (see `pending`): both can then reach
        each other."""
        return _ask(state_dir, "approve", peer=peer)

    @server.tool()
    def reject(peer: str) -> dict[str, Any]:
        """Reject the trust request of `peer`."""
        return _ask(state_dir, "reject", peer=peer)

    @server.tool()
    def send(peer: str, text: str) -> dict[str, Any]:
        """Leave a text message in the inbox of the trusted peer `peer` (at most 16 KiB).
        Returns the message's id there."""
        return _ask(state_dir, "send", peer=peer, text=text)

    @server.tool()
    def inbox() -> list[dict[str, Any]]:
        """Messages trusted peers sent this node, oldest first: id, sender, received
        (unix seconds), text."""
        messages: list[dict[str, Any]] = _ask(state_dir, "inbox").get("messages", [])
        return messages

    @server.tool()
    def request(
        peer: str, port: int, data: str, max_bytes: int = 16384, timeout_s: float = 5.0
    ) -> dict[str, Any]:
        """Open TCP to `port` of the trusted peer `peer`, send `data` (UTF-8), and return
        what it answers until it closes the connection, `max_bytes` arrived (at most
        65536) or `timeout_s` passed (at most 30). For HTTP, send a whole request
        (`GET / HTTP/1.0\\r\\nHost: NAME\\r\\n\\r\\n`)."""
        if not 1 <= port <= 65535:
            raise ToolError("port must be 1 to 65535 [code: bad_input]")
        limit = max(1, min(max_bytes, MAX_REPLY_BYTES))
        deadline = time.monotonic() + max(0.1, min(timeout_s, MAX_REQUEST_S))
        address = _peer_address(state_dir, peer)
        received = bytearray()
        timed_out = False
        try:
            with socket.create_connection(
                (address, port), timeout=deadline - time.monotonic()
            ) as conn:
                conn.sendall(data.encode())
                while len(received) < limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        timed_out = True
                        break
                    conn.settimeout(remaining)
                    chunk = conn.recv(limit - len(received))
                    if not chunk:
                        break
                    received += chunk
        except TimeoutError:
            timed_out = True
        except OSError as error:
            raise ToolError(
                f"{peer}:{port}: {error.strerror or error} [code: connection_failed]"
            ) from None
        return {
            "peer": peer,
            "port": port,
            "reply": received.decode(errors="replace"),
            "bytes": len(received),
            "truncated": len(received) >= limit,
            "timed_out": timed_out,
        }

    @server.tool()
    def send_file(peer: str, path: str) -> dict[str, Any]:
        """Send the file at `path` (on this machine) to the trusted peer `peer`; it keeps
        it once its size and SHA-256 match (see its `received`)."""
        with _service_errors():
            address = service_address(state_dir, peer)
            return peer_client.send_file(address, Path(path))

    @server.tool()
    def publish(peer: str, topic: str, data: Any) -> dict[str, Any]:
        """Publish `data` (any JSON) on `topic` of the broker of `peer` (a trusted peer, or
        this node's own hostname). Returns how many subscribers it reached."""
        with _service_errors():
            delivered = peer_client.publish(service_address(state_dir, peer), topic, data)
        return {"topic": topic, "delivered": delivered}

    @server.tool()
    def subscribe(
        peer: str, topic: str, count: int = 10, timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait for events published on `peer`'s topics matching `topic` (`*` is any run
        of characters) from now on; returns those that came, at most `count` (up to 100)
        within `timeout_s` seconds (up to 60)."""
        bounded_count = max(1, min(count, MAX_EVENTS))
        bounded_s = max(0.1, min(timeout_s, MAX_REQUEST_S * 2))
        with _service_errors():
            address = service_address(state_dir, peer)
            return list(peer_client.subscribe(address, topic, bounded_count, bounded_s))

    @server.tool()
    def task_submit(peer: str, description: str) -> dict[str, Any]:
        """Ask the trusted peer `peer` to do `description`. Returns the task (its id and
        state); `task_list` follows it until its result arrives."""
        task: dict[str, Any] = _ask(state_dir, "task_submit", peer=peer, description=description)[
            "task"
        ]
        return task

    @server.tool()
    def task_list() -> list[dict[str, Any]]:
        """Tasks this node submitted (role outgoing) and tasks submitted to it (incoming):
        id, peer, description, state (new, accepted, declined, done, expired), result."""
        tasks: list[dict[str, Any]] = _ask(state_dir, "task_list").get("tasks", [])
        return tasks

    @server.tool()
    def task_accept(task_id: str) -> dict[str, Any]:
        """Accept an incoming task (its submitter is told)."""
        task: dict[str, Any] = _ask(state_dir, "task_decide", id=task_id, state="accepted")["task"]
        return task

    @server.tool()
    def task_decline(task_id: str, reason: str) -> dict[str, Any]:
        """Decline an incoming task with a reason (its submitter is told)."""
        reply = _ask(state_dir, "task_decide", id=task_id, state="declined", reason=reason)
        task: dict[str, Any] = reply["task"]
        return task

    @server.tool()
    def task_result(task_id: str, result: str) -> dict[str, Any]:
        """Answer an incoming task with its result: it is done, and its submitter has it."""
        reply = _ask(state_dir, "task_decide", id=task_id, state="done", result=result)
        task: dict[str, Any] = reply["task"]
        return task

    return server


@contextmanager
def _service_errors() -> Iterator[None]:
    """A peer service's refusal (or the daemon's), as an MCP tool error."""
    try:
        yield
    except ServiceError as error:
        raise _tool_error(CliError(str(error), error.code, error.hint)) from None
    except CliError as error:
        raise _tool_error(error) from None
