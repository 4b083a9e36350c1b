"""Text that peers choose (trust notes, hostnames, messages, tasks, file names) reaches
the terminal through the CLI: it must show there as visible escapes, never move the
cursor, forge a line or reorder what is shown. A fake daemon on the control socket hands
the CLI hostile text; the real `pilotif` commands print it."""

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pilotif.cli.common import terminal_safe
from pilotif.daemon.api import Reply, Request, serve_control
from pilotif.util.paths import StatePaths

HOSTILE = "evil\x1b[2J\x1b]0;owned\x07\r\n2024-01-01 12:00:00 root: forged line\u202etxt.exe\x9b"
"""Clears the screen, sets the window title, starts a forged line, reverses the rest."""
RAW_DANGER = ("\x1b", "\r", "\x07", "\u202e", "\x9b")
VISIBLE = ("\\x1b", "\\x0d", "\\x0a", "\\x07", "\\u202e", "\\x9b")

_NODE = {
    "hostname": HOSTILE,
    "ipv4": "100.64.0.9",
    "public_key": "k",
    "tags": [HOSTILE],
    "online": True,
}
REPLIES: dict[str, dict[str, Any]] = {
    "inbox": {"messages": [{"id": "m1", "sender": HOSTILE, "received": 0, "text": HOSTILE}]},
    "task_list": {
        "tasks": [
            {
                "id": "t1",
                "role": "incoming",
                "peer": HOSTILE,
                "state": "done",
                "description": HOSTILE,
                "reason": HOSTILE,
                "result": HOSTILE,
            }
        ]
    },
    "pending": {"incoming": [{"node": _NODE, "message": HOSTILE}], "outgoing": [_NODE]},
    "find": {"nodes": [_NODE]},
    "trust": {"trusted": [_NODE]},
    "peers": {
        "peers": [
            {
                "hostname": HOSTILE,
                "ipv4": "100.64.0.9",
                "path": "direct",
                "endpoint": HOSTILE,
                "rx_bytes": 0,
                "tx_bytes": 0,
            }
        ]
    },
    "received": {
        "directory": "/var/lib/pilotif/received",
        "files": [{"name": HOSTILE, "size": 1, "sender": HOSTILE, "sha256": "ab" * 32}],
    },
}
EVENT = {"time": 0, "event": "trust_requested", "peer": HOSTILE, "message": HOSTILE}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state dir whose control socket is a fake daemon answering with REPLIES."""
    directory = Path(tempfile.mkdtemp(prefix="pilotif-cli-", dir="/tmp"))

    async def answer(request: Request) -> Reply:
        return {"ok": True, **REPLIES[str(request.get("command"))]}

    async def events(request: Request) -> AsyncGenerator[Reply, None]:
        yield EVENT

    loop = asyncio.new_event_loop()
    socket_path = StatePaths(directory).control_socket
    server = loop.run_until_complete(serve_control(socket_path, answer, {"events": events}))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield directory
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    shutil.rmtree(directory)


def pilotif(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilotif", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "lines"),
    [
        (["inbox"], 1),
        (["task", "list"], 2),
        (["pending"], 4),
        (["find", "tag:x"], 1),
        (["trust"], 1),
        (["peers"], 1),
        (["received"], 2),
        (["events"], 1),
    ],
)
def test_peer_text_prints_as_visible_escapes(
    state_dir: Path, command: list[str], lines: int
) -> None:
    """Issue 22: a stranger's trust note printed raw could clear the screen and forge
    lines. Every control character shows as an escape; each item keeps its own lines."""
    result = pilotif(state_dir, *command)
    for danger in RAW_DANGER:
        assert danger not in result.stdout, (command, result.stdout)
    assert len(result.stdout.splitlines()) == lines, result.stdout
    for escape in VISIBLE:
        assert escape in result.stdout
    assert "forged line" in result.stdout


@pytest.mark.parametrize("command", [["inbox"], ["task", "list"], ["pending"], ["events"]])
def test_json_output_keeps_peer_text_exact_and_escaped(state_dir: Path, command: list[str]) -> None:
    """--json gives the text exactly, escaped by JSON itself (no raw control bytes)."""
    result = pilotif(state_dir, *command, "--json")
    for danger in RAW_DANGER:
        assert danger not in result.stdout
    first = json.loads(result.stdout.splitlines()[0] if command == ["events"] else result.stdout)
    assert HOSTILE in _strings(first)


def _strings(value: Any) -> list[str]:
    """Every string anywhere in a parsed JSON value."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [text for item in items for text in _strings(item)]


def test_terminal_safe_leaves_ordinary_text_alone() -> None:
    text = "héllo wörld, 日本語, emoji 😀, tab-free text with \\ backslashes"
    assert terminal_safe(text) == text
    assert terminal_safe("\ud800\u2028\u2066\x7f") == "\\ud800\\u2028\\u2066\\x7f"
