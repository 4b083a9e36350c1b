"""Where a pilotif daemon spends its time: py-spy samples of a running daemon, by function.

`record` attaches `py-spy record --format raw` to a process for a fixed time (without pausing
it: --nonblocking) and `self_time` sums each sampled stack's count on its innermost frame,
so the top entries are the functions whose own code (not their callees) ran most.
"""

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PY_SPY_RATE_HZ = 100
PY_SPY_GRACE_S = 20.0
"""How much longer than its duration py-spy may take to attach, sample and write."""
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class SelfTime:
    """One function's share of the samples in which it was the innermost frame."""

    function: str
    samples: int
    share: float
    """Of every sample taken while the daemon was busy (idle samples are not recorded)."""


def start_record(pid: int, duration_s: int, output: Path) -> "subprocess.Popen[bytes]":
    """Start sampling `pid` for `duration_s` into `output` (raw collapsed stacks)."""
    if shutil.which("py-spy") is None:
        raise SystemExit("the profile needs py-spy: pip install -e '.[bench]' (or --only ...)")
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(duration_s),
            "--rate",
            str(PY_SPY_RATE_HZ),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_record(process: "subprocess.Popen[bytes]", duration_s: int) -> None:
    """Wait for a `start_record` py-spy to finish; RuntimeError with its output if it failed."""
    _, stderr = process.communicate(timeout=duration_s + PY_SPY_GRACE_S)
    if process.returncode != 0:
        raise RuntimeError(f"py-spy exited {process.returncode}: {stderr.decode().strip()}")


def _short(frame: str) -> str:
    """`name (path/to/file.py:12)` as `name (file.py)`."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['function']} ({Path(match['file']).name})"


def self_time(raw: Path) -> tuple[int, list[SelfTime]]:
    """Total busy samples and every function's self time, most first, from a raw profile."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[_short(stack.rsplit(";", 1)[-1])] += int(count)
    total = sum(counts.values())
    return total, [
        SelfTime(function=function, samples=samples, share=samples / total)
        for function, samples in counts.most_common()
    ]
