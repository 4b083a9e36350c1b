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

from pilotif_lab import LabError, LabHost, TransferResult, tcp_transfer

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
class CpuTime:
    """User and system CPU seconds."""

    user_s: float
    system_s: float

    def __sub__(self, other: "CpuTime") -> "CpuTime":
        return CpuTime(self.user_s - other.user_s, self.system_s - other.system_s)

    @property
    def total_s(self) -> float:
        return self.user_s + self.system_s


@dataclass(frozen=True)
class IperfResult:
    """What one iperf3 test moved, and what the tunnel daemons of each side spent on it."""

    megabits_per_s: float
    received_bytes: int
    retransmits: int
    client_side_cpu: CpuTime
    """The daemon on the iperf3 client's host (it sends, unless `-R`)."""
    server_side_cpu: CpuTime

    @property
    def daemon_cpu_s(self) -> float:
        return self.client_side_cpu.total_s + self.server_side_cpu.total_s

    @property
    def cpu_s_per_gb(self) -> float:
        """CPU seconds of both tunnel daemons per 10^9 bytes iperf3 delivered."""
        return self.daemon_cpu_s / self.gigabytes

    @property
    def gigabytes(self) -> float:
        return self.received_bytes / _BYTES_PER_GB


@dataclass(frozen=True)
class PingRtt:
    """Round-trip times of one burst of pings through the tunnel."""

    average_ms: float
    median_ms: float
    lost: int


def _cpu(pid: int) -> CpuTime:
    """User and system CPU seconds of a process (all its threads) so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return CpuTime(0.0, 0.0)
    fields = stat.rsplit(")", 1)[1].split()
    return CpuTime(
        int(fields[_STAT_UTIME_INDEX]) / _CLOCK_TICKS_PER_S,
        int(fields[_STAT_STIME_INDEX]) / _CLOCK_TICKS_PER_S,
    )


def _total_cpu(pids: list[int]) -> CpuTime:
    times = [_cpu(pid) for pid in pids]
    return CpuTime(sum(t.user_s for t in times), sum(t.system_s for t in times))


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
    a: LabHost,
    b: LabHost,
    time_s: int,
    *extra_args: str,
    address: str | None = None,
    bind: str | None = None,
) -> IperfResult:
    """One iperf3 test from a client on A to a server on B's overlay address (or
    `address`; the server listens there, or on `bind`; `-R`: B sends), with the CPU
    seconds that the tunnel daemons of both namespaces spent during it. The processes in
    a namespace before the test are its tunnel daemon (whatever the implementation,
    including any workers it started)."""
    target = address or b.addresses.overlay_v4
    pids = a.namespace.pids(), b.namespace.pids()
    with _iperf_server(b, bind or target):
        before = [_total_cpu(side) for side in pids]
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
        client_side, server_side = (
            _total_cpu(side) - earlier for side, earlier in zip(pids, before, strict=True)
        )
    report = json.loads(result.stdout)["end"]
    return IperfResult(
        megabits_per_s=report["sum_received"]["bits_per_second"] / _BITS_PER_MEGABIT,
        received_bytes=int(report["sum_received"]["bytes"]),
        retransmits=int(report["sum_sent"].get("retransmits", 0)),
        client_side_cpu=client_side,
        server_side_cpu=server_side,
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
