"""Issue 25's impaired-path figure: one TCP stream each way between a TUN node and a
userspace node over 100 ms of round trip and 1% loss each way (needs root).

    sudo python3 bench/userspace_impaired.py [--time 20] [--only userspace tun]

The NAT lab (pilotif_lab.nat) with alpha and beta behind cone NATs, a delay cable
(pilotif_lab.cable) between each router and the internet: 25 ms and 0.5% loss each way
on each, so 100 ms of round trip and about 1% loss each way between the two nodes.
alpha is a TUN node; beta is a userspace node (`up --userspace --expose PORT`, the iperf3
server on its loopback) or, with `tun`, a TUN node too (the kernel's TCP for reference).

Per direction it prints the goodput at the receiver (iperf3, intervals of INTERVAL_S) and
the longest stretch of intervals in which the receiver got nothing (a stall), against the
issue's target: >= 10 MB/s and no stall over 1 s; then what each cable carried and
dropped (beyond its configured loss, a cable that drops is the bottleneck, not the path).
"""

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from pilotif_lab.nat import Agent, NatKind, nat_lab, poll_until, trust

IPERF_PORT: Final = 5201
DEFAULT_TIME_S: Final = 20
INTERVAL_S: Final = 0.25
"""iperf3's report interval: a stall is measured in these."""
ONE_WAY_DELAY_MS: Final = 25.0
"""Per cable, each way: two cables on the path make a 100 ms round trip."""
CABLE_LOSS: Final = 0.005
"""Per cable, each way: two cables make about 1% each way."""
PATH_TIMEOUT_S: Final = 60.0
IPERF_GRACE_S: Final = 60.0
TARGET_MB_S: Final = 10.0
STALL_TARGET_S: Final = 1.0
_BYTES_PER_MB: Final = 1e6
CABLE_LOGS: Final = "cable-r*.log"
"""The cables' counters in the lab's directory (pilotif_lab.nat names them)."""


def _received(report: dict[str, Any], reverse: bool) -> tuple[float, float]:
    """(MB/s at the receiver, longest stretch of empty intervals in s) of an iperf3 -J
    report run with --get-server-output: the receiver is the server, or the client with
    -R."""
    receiver = report if reverse else report["server_output_json"]
    intervals = [interval["sum"]["bytes"] for interval in receiver["intervals"]]
    total = report["end"]["sum_received"]["bytes"]
    seconds = report["end"]["sum_received"]["seconds"]
    longest = max(
        (len(list(run)) for empty, run in itertools.groupby(b == 0 for b in intervals) if empty),
        default=0,
    )
    return total / seconds / _BYTES_PER_MB, longest * INTERVAL_S


def _listening(agent: Agent, address: str) -> bool:
    """Whether a TCP socket listens on `address`:IPERF_PORT in the agent's namespace."""
    listing = agent.namespace.run("ss", "-Htln", f"src {address}:{IPERF_PORT}").stdout
    return bool(listing.strip())


def _stream(alpha: Agent, beta: Agent, address: str, bind: str, time_s: int) -> None:
    """One stream each way between alpha and beta's `address` (the server on `bind`)."""
    for reverse in (False, True):
        server = beta.namespace.spawn(
            "iperf3", "-s", "-1", "-J", "-i", str(INTERVAL_S), "-B", bind, "-p", str(IPERF_PORT)
        )  # fmt: skip
        try:
            poll_until(
                lambda: True if _listening(beta, bind) else None, PATH_TIMEOUT_S, "iperf3 -s"
            )
            extra = ("-R",) if reverse else ()
            result = alpha.namespace.run(
                "iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(time_s), "-J",
                "-i", str(INTERVAL_S), "--get-server-output", *extra,
                timeout_s=time_s + IPERF_GRACE_S,
            )  # fmt: skip
        finally:
            beta.namespace.stop(server)
        rate, stall = _received(json.loads(result.stdout), reverse)
        ok = rate >= TARGET_MB_S and stall <= STALL_TARGET_S
        sender = "beta" if reverse else "alpha"
        print(
            f"  {sender} sends: {rate:6.2f} MB/s ({8 * rate:6.1f} Mbit/s), longest stall"
            f" {stall:.2f} s  {'ok' if ok else 'MISSED'}",
            flush=True,
        )


def _measure(setup: str, time_s: int) -> None:
    nats = (NatKind.CONE, NatKind.CONE)
    agents = (("alpha", 0), ("beta", 1))
    with tempfile.TemporaryDirectory(prefix="pf-impaired-") as workdir:
        with nat_lab(
            nats,
            agents,
            Path(workdir),
            wan_delay_ms=(ONE_WAY_DELAY_MS, ONE_WAY_DELAY_MS),
            wan_loss=(CABLE_LOSS, CABLE_LOSS),
        ) as lab:
            alpha, beta = lab["alpha"], lab["beta"]
            alpha.up()
            userspace = setup == "userspace"
            beta.up(extra_args=("--userspace", "--expose", str(IPERF_PORT)) if userspace else ())
            trust(beta, alpha)
            alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
            beta.wait_for_path("alpha", ("direct",), PATH_TIMEOUT_S)
            address = beta.status()["node"]["ipv4"]
            print(f"{setup} (beta), alpha a TUN node, {time_s} s each way:", flush=True)
            _stream(alpha, beta, address, "127.0.0.1" if userspace else address, time_s)
        _print_cables(Path(workdir))


def _print_cables(workdir: Path) -> None:
    """What each cable did over both streams (its counters, written when it stopped):
    drops beyond the configured loss mean the cable, not the path, lost frames."""
    for log in sorted(workdir.glob(CABLE_LOGS)):
        lines = log.read_text().splitlines()
        if not lines or not lines[-1].startswith("{"):
            print(f"  {log.stem}: no counters: {lines[-1] if lines else 'no output'}")
            continue
        for direction, counts in json.loads(lines[-1]).items():
            print(
                f"  {log.stem} {direction}: {counts['carried']} carried, {counts['lost']} lost"
                f" at random, {counts['socket_drops']} dropped by its socket,"
                f" {counts['send_failures']} refused, at most {counts['most_held']} held,"
                f" {counts['latest_late_ms']:.1f} ms late at worst",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", type=int, default=DEFAULT_TIME_S, help="seconds per stream")
    parser.add_argument("--only", nargs="+", choices=("userspace", "tun"), default=["userspace"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("builds network namespaces: run as root", file=sys.stderr)
        return 2
    for setup in args.only:
        _measure(setup, args.time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
