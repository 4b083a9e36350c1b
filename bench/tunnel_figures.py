"""The measurements the benchmark takes over one tunnel of the lab (needs root).

iperf3 tests (one stream, parallel streams, reverse direction), a burst of pings, the CPU
time the tunnel daemons spend, and a large transfer whose SHA-256 must match on both ends.
Every function takes the two lab hosts with a tunnel already up between them.
"""

import json
import os
import re
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pilotif.lab import LabError, LabHost, TransferResult, tcp_transfer

IPERF_PORT = 5201
IPERF_GRACE_S = 30.0
"""How much longer than its test time iperf3 may take (connect, handshake, report)."""
PING_COUNT = 100
PING_INTERVAL_S = 0.01
PING_REPLY_TIMEOUT_S = 2
PING_GRACE_S = 15.0
_SERVER_READY = b"Server listening"
_BITS_PER_MEGABIT = 1e6
_BYTES_PER_GB = 1e9
_PING_REPLY_TIME = re.compile(r"time=([\d.]+) ms")
_STAT_UTIME_INDEX = 11
"""utime is field 14 of /proc/PID/stat; counted from the state (field 3) after the name."""
_STAT_STIME_INDEX = 12
_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class IperfResult:
    """What one iperf3 test moved, and what the tunnel daemons spent on it."""

    megabits_per_s: float
    received_bytes: int
    retransmits: int
    daemon_cpu_s: float

    @property
    def cpu_s_per_gb(self) -> float:
        """CPU seconds of both tunnel daemons per 10^9 bytes iperf3 delivered."""
        return self.daemon_cpu_s / (self.received_bytes / _BYTES_PER_GB)


@dataclass(frozen=True)
class PingRtt:
    """Round-trip times of one burst of pings through the tunnel."""

    average_ms: float
    median_ms: float
    lost: int


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process (all its threads) so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[_STAT_UTIME_INDEX]) + int(fields[_STAT_STIME_INDEX])
    return ticks / _CLOCK_TICKS_PER_S


def daemon_pids(a: LabHost, b: LabHost) -> list[int]:
    """Every process in the two namespaces: with a tunnel up and nothing else running in them,
    the tunnel daemons (whatever the implementation, including any workers it started)."""
    return a.namespace.pids() + b.namespace.pids()


def _total_cpu_s(pids: list[int]) -> float:
    return sum(_cpu_s(pid) for pid in pids)


@contextmanager
def _iperf_server(host: LabHost, address: str) -> Iterator[None]:
    """An iperf3 server for one test on `address` of the host, stopped at the end."""
    server = host.namespace.spawn(
        "iperf3", "-s", "-1", "--forceflush", "-B", address, "-p", str(IPERF_PORT), pipes=True
    )
    try:
        assert server.stdout is not None
        while _SERVER_READY not in (line := server.stdout.readline()):
            if not line:
                raise LabError("iperf3 server did not start")
        yield
    finally:
        host.namespace.stop(server)


def iperf(
    a: LabHost, b: LabHost, time_s: int, *extra_args: str, address: str | None = None
) -> IperfResult:
    """One iperf3 test from a client on A to a server on B's overlay address (or
    `address`; `-R`: B sends), with the CPU seconds that the tunnel daemons of both
    namespaces spent during it."""
    target = address or b.addresses.overlay_v4
    pids = daemon_pids(a, b)
    with _iperf_server(b, target):
        cpu_before_s = _total_cpu_s(pids)
        result = a.namespace.run(
            "iperf3",
            "-c",
            target,
            "-p",
            str(IPERF_PORT),
            "-t",
            str(time_s),
            "-J",
            *extra_args,
            timeout_s=time_s + IPERF_GRACE_S,
        )
        cpu_s = _total_cpu_s(pids) - cpu_before_s
    report = json.loads(result.stdout)["end"]
    return IperfResult(
        megabits_per_s=report["sum_received"]["bits_per_second"] / _BITS_PER_MEGABIT,
        received_bytes=int(report["sum_received"]["bytes"]),
        retransmits=int(report["sum_sent"].get("retransmits", 0)),
        daemon_cpu_s=cpu_s,
    )


def ping_rtt(a: LabHost, b: LabHost, address: str | None = None) -> PingRtt:
    """PING_COUNT pings from A to B's overlay address (or `address`), PING_INTERVAL_S
    apart."""
    result = a.namespace.run(
        "ping",
        "-n",
        "-c",
        str(PING_COUNT),
        "-i",
        str(PING_INTERVAL_S),
        "-W",
        str(PING_REPLY_TIMEOUT_S),
        address or b.addresses.overlay_v4,
        check=False,
        timeout_s=PING_GRACE_S + PING_COUNT * PING_INTERVAL_S,
    )
    rtts_ms = [float(match) for match in _PING_REPLY_TIME.findall(result.stdout)]
    if not rtts_ms:
        raise LabError(f"no ping through the tunnel was answered: {result.stdout}")
    return PingRtt(
        average_ms=statistics.fmean(rtts_ms),
        median_ms=statistics.median(rtts_ms),
        lost=PING_COUNT - len(rtts_ms),
    )


def checked_transfer(a: LabHost, b: LabHost, size_bytes: int) -> TransferResult:
    """`size_bytes` random bytes over TCP from A to B; compare `intact` (sizes and SHA-256)."""
    return tcp_transfer(a.namespace, b.namespace, b.addresses.overlay_v4, size_bytes)
