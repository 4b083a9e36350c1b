"""Issue 25 item 5: docs/examples/embedded_node.py, two pilotif.Node in one program (no
daemon, no TUN), run as the docs say against a registry, in a namespace of its own (only
loopback: nothing leaves it). It prints the answer alpha's server gave beta's line."""

import os
import sys
from pathlib import Path

import pytest
from pilotif_lab.nat import poll_until
from pilotif_lab.netns import namespace, new_run_id
from pilotif_lab.pilotif_node import pilotif_executable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds a network namespace: needs root"),
]

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "embedded_node.py"
REGISTRY = "127.0.0.1:7946"
RUN_TIMEOUT_S = 90.0


def test_the_embedded_example_runs(tmp_path: Path) -> None:
    with namespace(new_run_id(), "embed") as ns:
        ns.spawn(
            pilotif_executable(),
            "registry",
            "--listen",
            REGISTRY,
            "--state-dir",
            str(tmp_path / "registry"),
            log_path=tmp_path / "registry.log",
        )
        poll_until(
            lambda: bool(ns.run("ss", "-Hnlu", "src", REGISTRY).stdout.strip()) or None,
            RUN_TIMEOUT_S,
            "the registry listening",
        )
        done = ns.run(
            sys.executable,
            str(EXAMPLE),
            REGISTRY,
            str(tmp_path / "nodes"),
            timeout_s=RUN_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout == (
            'got {"action":"start_stream", "parameters":"real_time"}\nheard a datagram\n'
        )
