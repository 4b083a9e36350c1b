"""`pilotif mcp` with the MCP SDK's own client over stdio, the server in alpha's namespace
of the NAT lab: it lists its tools, answers `status`, sends a message that arrives in
beta's inbox, talks TCP to beta's echo port (its answer in `untrusted_reply`), sends a file
of --files-from that beta keeps (and refuses one outside it), and turns bad calls into
tool errors. tests/unit/test_mcp_http.py covers streamable HTTP (token, Host, Origin)."""

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from pilotif_lab.nat import Agent, NatKind, trusting_pair

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

PATH_TIMEOUT_S = 15.0
TOOLS = {
    "send_file",
    "publish",
    "subscribe",
    "task_submit",
    "task_list",
    "task_result",
    "status",
    "peers",
    "find",
    "handshake",
    "pending",
    "approve",
    "reject",
    "send",
    "inbox",
    "request",
}


def _payload(result: Any) -> Any:
    """A tool result's value: structured content if any, else its text as JSON."""
    if result.structured_content is not None:
        value = result.structured_content
        # A tool that returns something other than an object has it wrapped as "result".
        return value["result"] if set(value) == {"result"} else value
    return json.loads(result.content[0].text)


async def _session_checks(agent: Agent, outbox: Path) -> dict[str, Any]:
    server = StdioServerParameters(
        command="ip",
        args=[
            "netns",
            "exec",
            agent.namespace.name,
            sys.executable,
            "-m",
            "pilotif",
            "mcp",
            "--state-dir",
            str(agent.state_dir),
            "--files-from",
            str(outbox),
        ],
        env=dict(os.environ),
    )
    seen: dict[str, Any] = {}
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        seen["tools"] = {tool.name for tool in (await session.list_tools()).tools}
        seen["status"] = _payload(await session.call_tool("status", {}))
        seen["send"] = _payload(
            await session.call_tool("send", {"peer": "beta", "text": "from mcp"})
        )
        seen["echo"] = _payload(
            await session.call_tool(
                "request", {"peer": "beta", "port": 7, "data": "ping\n", "timeout_s": 2}
            )
        )
        seen["stranger"] = await session.call_tool("send", {"peer": "nobody", "text": "x"})
        seen["publish"] = _payload(
            await session.call_tool(
                "publish", {"peer": "beta", "topic": "jobs/1", "data": {"n": 1}}
            )
        )
        seen["task"] = _payload(
            await session.call_tool("task_submit", {"peer": "beta", "description": "from mcp"})
        )
        seen["wrong_args"] = await session.call_tool("send", {"peer": "beta"})
        seen["file"] = await session.call_tool("send_file", {"peer": "beta", "path": "note.txt"})
        seen["escape"] = await session.call_tool(
            "send_file", {"peer": "beta", "path": str(agent.state_dir / "identity.key")}
        )
    return seen


def test_an_mcp_client_uses_the_node_as_tools(tmp_path: Path) -> None:
    with trusting_pair(
        (NatKind.CONE, NatKind.CONE), tmp_path, ("direct", "relay"), PATH_TIMEOUT_S
    ) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        outbox = tmp_path / "outbox"
        outbox.mkdir()
        (outbox / "note.txt").write_text("from mcp, a file\n")

        seen = asyncio.run(_session_checks(alpha, outbox))

        assert seen["tools"] >= TOOLS
        assert seen["status"]["node"]["hostname"] == "alpha"
        assert seen["send"]["peer"] == "beta"
        assert [(m["sender"], m["text"]) for m in beta.json("inbox")] == [("alpha", "from mcp")]
        assert seen["echo"]["untrusted_reply"] == "ping\n" and seen["echo"]["timed_out"] is True
        assert seen["stranger"].is_error and "not_trusted" in seen["stranger"].content[0].text
        assert seen["wrong_args"].is_error
        assert seen["publish"] == {"topic": "jobs/1", "delivered": 0}
        assert not seen["file"].is_error, seen["file"].content
        listing = beta.json("received")
        [kept] = listing["files"]
        assert kept["sender"] == "alpha" and kept["name"].endswith("note.txt")
        assert (Path(listing["directory"]) / kept["name"]).read_text() == "from mcp, a file\n"
        assert seen["escape"].is_error and "not_allowed" in seen["escape"].content[0].text
        [task] = beta.json("task", "list")
        assert (task["id"], task["description"], task["peer"]) == (
            seen["task"]["id"],
            "from mcp",
            "alpha",
        )
