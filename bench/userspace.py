"""Issue 25's benchmark: a userspace node (`up --userspace`, no TUN) against a TUN node,
beside two TUN nodes and two wireguard-go 0.0.20231211 nodes in the same run (needs root).

    sudo python3 bench/userspace.py [--time 10] [--pairs 3] [--profile]

Builds two namespaces joined by a veth pair (the lab of bench/throughput.py), then, PAIRS
times, brings up in turn a tunnel of each setup (static keys, MTU 1420):

- tun:        pilotif with a TUN on both ends;
- userspace:  pilotif with a TUN on A, `pilotif up --userspace --expose PORT` on B (the
              iperf3 and echo servers listen on B's loopback, reached through --expose);
- wireguard-go: wireguard-go 0.0.20231211 on both ends (skipped when it is not there:
              scripts/reference-peers.sh).

Over each it measures:

- stream:   one TCP stream from A to B (`iperf3 -t TIME`): the userspace node receives;
- reverse:  the same with `-R`: the userspace node sends;
- rr:       round trips of a 64-byte request and its 64-byte answer over one established
            connection (TCP_NODELAY), median in microseconds.

It prints every run, then per figure the median of each setup and the ratio userspace / tun
(the issue's targets: stream and reverse >= 1000 Mbit/s and >= 0.5x, rr <= 2x).
With `--profile`, py-spy samples the userspace daemon during one more stream each way and
prints the top functions by self time.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from daemon_profile import self_time, start_record, wait_record
from pilotif_lab import LabError, LabHost, NodeKind, PilotifNode, host_pair
from pilotif_lab.reference_peers import reference_binary
from pilotif_lab.topology import make_node, tunnel_configs
from tunnel_figures import IPERF_PORT, iperf

DEFAULT_TIME_S: Final = 10
DEFAULT_PAIRS: Final = 3
RR_PORT: Final = 7007
RR_COUNT: Final = 2000
"""Round trips measured (after RR_WARMUP ones not counted)."""
RR_WARMUP: Final = 100
RR_MESSAGE_BYTES: Final = 64
RR_TIMEOUT_S: Final = 120.0
LOOPBACK: Final = "127.0.0.1"
PROFILE_TOP: Final = 12
STREAM_TARGET_MBIT_S: Final = 1000.0
STREAM_TARGET_RATIO: Final = 0.5
RR_TARGET_RATIO: Final = 2.0

_RR_SERVER: Final = """
import socket, socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := self.request.recv(65536):
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
server = socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), Echo)
print("ready", flush=True)
server.serve_forever()
"""
_RR_CLIENT: Final = """
import socket, statistics, sys, time
host, port, count, warmup, size = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
deadline = time.monotonic() + 30
while True:
    try:
        s = socket.create_connection((host, port), timeout=10)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
message = bytes(size)
times = []
for i in range(count + warmup):
    start = time.perf_counter()
    s.sendall(message)
    got = 0
    while got < size:
        chunk = s.recv(size - got)
        if not chunk:
            raise SystemExit("the echo server closed")
        got += len(chunk)
    if i >= warmup:
        times.append(time.perf_counter() - start)
print(statistics.median(times) * 1e6)
"""


def _rr_median_us(a: LabHost, b: LabHost) -> float:
    """The median round trip of a 64-byte request and answer from A to B's overlay
    address, in microseconds."""
    server = b.namespace.spawn(sys.executable, "-c", _RR_SERVER, str(RR_PORT), pipes=True)
    try:
        assert server.stdout is not None
        if not server.stdout.readline():
            raise LabError("the echo server did not start")
        result = a.namespace.run(
            sys.executable,
            "-c",
            _RR_CLIENT,
            b.addresses.overlay_v4,
            str(RR_PORT),
            str(RR_COUNT),
            str(RR_WARMUP),
            str(RR_MESSAGE_BYTES),
            timeout_s=RR_TIMEOUT_S,
        )
    finally:
        b.namespace.stop(server)
    return float(result.stdout.strip())


SETUPS: Final = ("tun", "userspace", "wireguard-go")


def _start(setup: str, a: LabHost, b: LabHost, stack: ExitStack) -> PilotifNode | None:
    """Both ends of `setup`'s tunnel, stopped when `stack` closes; the userspace node."""
    config_a, config_b = tunnel_configs(a, b, preshared_key=False)
    kind = NodeKind.WIREGUARD_GO_2023 if setup == "wireguard-go" else NodeKind.PILOTIF
    node_a = make_node(kind, a, config_a)
    stack.callback(node_a.stop)
    node_a.start()
    if setup != "userspace":
        node_b = make_node(kind, b, config_b)
        stack.callback(node_b.stop)
        node_b.start()
        return None
    exposes = ("--expose", str(IPERF_PORT), "--expose", str(RR_PORT))
    userspace = PilotifNode(
        b.namespace,
        b.new_interface_name(),
        config_b,
        b.workdir,
        up_args=("--userspace", *exposes),
    )
    stack.callback(userspace.stop)
    userspace.start()
    return userspace


def _measure(setup: str, a: LabHost, b: LabHost, time_s: int, profile: bool) -> dict[str, float]:
    bind = LOOPBACK if setup == "userspace" else None
    with ExitStack() as stack:
        userspace = _start(setup, a, b, stack)
        figures = {
            "rr": _rr_median_us(a, b),
            "stream": iperf(a, b, time_s, bind=bind).megabits_per_s,
            "reverse": iperf(a, b, time_s, "-R", bind=bind).megabits_per_s,
        }
        if profile and userspace is not None:
            _profile(a, b, userspace, time_s)
        return figures


def _profile(a: LabHost, b: LabHost, node: PilotifNode, time_s: int) -> None:
    pid = node.pid()
    if pid is None:
        raise LabError("the userspace daemon wrote no PID file")
    for name, extra in (("receives", ()), ("sends", ("-R",))):
        with tempfile.TemporaryDirectory(prefix="pf-profile-") as directory:
            raw = Path(directory) / "userspace.raw"
            recorder = start_record(pid, time_s, raw)
            run = iperf(a, b, time_s, *extra, bind=LOOPBACK)
            wait_record(recorder, time_s)
            total, entries = self_time(raw)
            print(
                f"\nprofile: the userspace node {name} ({run.megabits_per_s:.0f} Mbit/s while"
                f" sampled): {total} busy samples, top {PROFILE_TOP} by self time"
            )
            for entry in entries[:PROFILE_TOP]:
                print(f"  {entry.share:6.1%} {entry.samples:6d}  {entry.function}")


def _has_wireguard_go() -> bool:
    try:
        reference_binary("wireguard-go")
    except LabError:
        return False
    return True


def _summary(runs: dict[str, list[dict[str, float]]]) -> bool:
    """Print the medians and the ratios; whether the targets are met."""
    medians = {
        setup: {figure: statistics.median(r[figure] for r in rows) for figure in rows[0]}
        for setup, rows in runs.items()
        if rows
    }
    met = True
    print("\nmedians: " + "  ".join(f"{s:>12}" for s in medians) + "  userspace/tun")
    checks: dict[str, Callable[[float, float], bool]] = {
        "stream": lambda value, ratio: (
            value >= STREAM_TARGET_MBIT_S and ratio >= STREAM_TARGET_RATIO
        ),
        "reverse": lambda value, ratio: (
            value >= STREAM_TARGET_MBIT_S and ratio >= STREAM_TARGET_RATIO
        ),
        "rr": lambda _value, ratio: ratio <= RR_TARGET_RATIO,
    }
    for figure, check in checks.items():
        values = "  ".join(f"{medians[s][figure]:>12.1f}" for s in medians)
        ratio = medians["userspace"][figure] / medians["tun"][figure]
        ok = check(medians["userspace"][figure], ratio)
        met = met and ok
        unit = "us" if figure == "rr" else "Mbit/s"
        print(f"{figure:>7} ({unit}) {values}  {ratio:.2f}x {'ok' if ok else 'MISSED'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", type=int, default=DEFAULT_TIME_S, help="seconds per stream")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    parser.add_argument("--only", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument("--profile", action="store_true", help="py-spy the userspace node")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("builds network namespaces: run as root", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("iperf3 is not installed (scripts/install.sh test installs it)", file=sys.stderr)
        return 2
    setups = [s for s in args.only if s != "wireguard-go" or _has_wireguard_go()]
    runs: dict[str, list[dict[str, float]]] = {setup: [] for setup in setups}
    with host_pair() as (a, b):
        for pair in range(args.pairs):
            for setup in setups:
                profile = args.profile and pair == args.pairs - 1
                figures = _measure(setup, a, b, args.time, profile)
                runs[setup].append(figures)
                print(
                    f"run {pair + 1} {setup:>12}: stream {figures['stream']:7.1f} Mbit/s"
                    f"  reverse {figures['reverse']:7.1f} Mbit/s  rr {figures['rr']:7.1f} us",
                    flush=True,
                )
    if "tun" not in runs or "userspace" not in runs:
        return 0
    return 0 if _summary(runs) else 3


if __name__ == "__main__":
    sys.exit(main())
