"""Throughput of pilotif against wireguard-go, on the same lab, in one invocation (needs root).

    sudo python bench/throughput.py [--time 10] [--pairs 3]

Builds two namespaces joined by a veth pair, then alternately brings up a pilotif<->pilotif
tunnel and a wireguard-go<->wireguard-go tunnel (same keys layout, MTU 1420, no preshared
key), and runs one single-stream TCP iperf3 test from A to B over each
(`iperf3 -c 100.64.0.2 -t TIME -J`). Prints every run, the median of each implementation
and the ratio pilotif / wireguard-go.
"""

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass

from pilotif.lab import LabError, LabHost, NodeKind, host_pair, ping, tunnel
from pilotif.lab.topology import TUNNEL_MTU

DEFAULT_TIME_S = 10
DEFAULT_PAIRS = 3
IPERF_PORT = 5201
IPERF_GRACE_S = 30.0
"""How much longer than its test time iperf3 may take (connect, handshake, report)."""
_SERVER_READY = b"Server listening"
_BITS_PER_MEGABIT = 1e6
EXIT_NOT_ROOT = 2


@dataclass(frozen=True)
class Run:
    """One iperf3 test over one tunnel."""

    kind: NodeKind
    megabits_per_s: float
    retransmits: int


def _iperf(a: LabHost, b: LabHost, kind: NodeKind, time_s: int) -> Run:
    """Bring up a tunnel of `kind` on both hosts and run one iperf3 test from A to B."""
    address = b.addresses.overlay_v4
    with tunnel((kind, kind), (a, b), preshared_key=False):
        if not ping(a.namespace, address).all_answered:
            raise LabError(f"the {kind} tunnel does not answer ping")
        server = b.namespace.spawn(
            "iperf3", "-s", "-1", "--forceflush", "-B", address, "-p", str(IPERF_PORT), pipes=True
        )
        try:
            assert server.stdout is not None
            while _SERVER_READY not in (line := server.stdout.readline()):
                if not line:
                    raise LabError("iperf3 server did not start")
            result = a.namespace.run(
                "iperf3",
                "-c",
                address,
                "-p",
                str(IPERF_PORT),
                "-t",
                str(time_s),
                "-J",
                timeout_s=time_s + IPERF_GRACE_S,
            )
        finally:
            b.namespace.stop(server)
    report = json.loads(result.stdout)["end"]
    return Run(
        kind=kind,
        megabits_per_s=report["sum_received"]["bits_per_second"] / _BITS_PER_MEGABIT,
        retransmits=int(report["sum_sent"].get("retransmits", 0)),
    )


def main() -> int:
    """Run the pairs and print each run, the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", type=int, default=DEFAULT_TIME_S, help="seconds per run")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="runs of each")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the benchmark builds network namespaces and needs root: run it with sudo")
        return EXIT_NOT_ROOT

    kinds = (NodeKind.PILOTIF, NodeKind.WIREGUARD_GO)
    runs: list[Run] = []
    print(
        f"single TCP stream, iperf3 -t {args.time}, MTU {TUNNEL_MTU}, "
        f"{args.pairs} pairs, {os.cpu_count()} CPUs"
    )
    with host_pair() as (a, b):
        for number in range(1, args.pairs + 1):
            for kind in kinds:
                run = _iperf(a, b, kind, args.time)
                runs.append(run)
                print(
                    f"pair {number} {kind:<13} {run.megabits_per_s:9.1f} Mbit/s  "
                    f"retransmits {run.retransmits}",
                    flush=True,
                )
    medians = {
        kind: statistics.median(r.megabits_per_s for r in runs if r.kind is kind) for kind in kinds
    }
    for kind in kinds:
        print(f"median {kind:<13} {medians[kind]:9.1f} Mbit/s")
    ratio = medians[NodeKind.PILOTIF] / medians[NodeKind.WIREGUARD_GO]
    print(f"ratio pilotif / wireguard-go: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
