"""Issue 22 in the NAT lab: `pilotif up --join-key KEY` leaves a daemon whose command
line (/proc/PID/cmdline, readable by every local user) does not hold the key, and the key
still reached the registry (the operator's tag is granted)."""

import os
from pathlib import Path

import pytest
from pilotif_lab.nat import NatKind, nat_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]


def test_the_daemon_command_line_holds_no_join_key(tmp_path: Path) -> None:
    with nat_lab((NatKind.CONE,), (("member", 0),), tmp_path) as lab:
        created = lab.admin("key", "create", "--tags", "team")
        member = lab["member"]
        member.up(join_key=created["key"])
        pid = member.pid()
        assert pid is not None
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--foreground" in command_line
        assert not any(created["key"].encode() in part for part in command_line)
        assert b"--join-key" not in command_line
        nodes = {node["hostname"]: node for node in lab.admin("node", "list")}
        assert nodes["member"]["granted_tags"] == ["team"]
