"""The five figures of issue 14: pilotif against the best userspace WireGuard we can run,
and Nebula, on the same lab (needs root).

    sudo scripts/reference-peers.sh          # once: wireguard-go 0.0.20231211, Nebula 1.9.3
    sudo python3 bench/throughput.py [--time 10] [--pairs 3] [--only FIGURE ...] [--policy]

Builds two namespaces joined by a veth pair, then, PAIRS times, brings up in turn a
tunnel of each implementation (same key layout, MTU 1420, no preshared key,
100.64.0.1 <-> 100.64.0.2): pilotif, wireguard-go 0.0.20231211 (the reference: TUN
TSO/GRO and UDP GSO/GRO), Debian's wireguard-go 0.0.20220316 (issue 4's reference),
Nebula 1.9.3 (its defaults), and the raw veth with no tunnel (the machine's ceiling).
Over each it measures:

- ping:     RTT of 100 pings from A to B (`ping -c 100 -i 0.01`), average;
- stream:   one TCP stream from A to B (`iperf3 -c 100.64.0.2 -t TIME -J`);
- cpu:      CPU seconds (utime + stime from /proc/PID/stat) of both tunnel daemons during
            the `stream` test, per 10^9 bytes iperf3 delivered (each run's line also
            splits it: user and system time of the sending and of the receiving daemon);
- reverse:  one TCP stream from B to A (the same with `-R`);
- parallel: 8 TCP streams from A to B (the same with `-P 8`).

With `--policy` a third tunnel joins each pair: pilotif with TEN_RULE_POLICY (default
deny, ten rules that let the tests through) on both ends, and the summary adds the ratio
pilotif+policy / pilotif (issue 11: within 5%).

Throughputs are iperf3's receiver-side rates (the raw veth has no daemon: no CPU figure).
It prints every run, then per figure the median of each implementation, the ratio
pilotif / wireguard-go 0.0.20231211 and whether it meets the target of issue 14.
Besides the pairs, over one more pilotif tunnel:

- sha256:   a 200 MB TCP transfer from A to B whose size and SHA-256 must match;
- profile:  py-spy samples of the sending (A) and the receiving (B) daemon during one more
            `stream` test, and the top functions by self time of each.

Exit status: 0 when every measured figure meets its target, 1 when the transfer arrived
corrupted, 3 when a figure misses its target.
"""

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from daemon_profile import self_time, start_record, wait_record
from pilotif_lab import LabError, LabHost, NodeKind, PilotifNode, host_pair, ping, tunnel
from pilotif_lab.topology import TUNNEL_MTU
from tunnel_figures import (
    PING_COUNT,
    PING_INTERVAL_S,
    checked_transfer,
    iperf,
    ping_rtt,
)

DEFAULT_TIME_S = 10
DEFAULT_PAIRS = 3
DEFAULT_TRANSFER_MB = 200
PARALLEL_STREAMS = 8
PROFILE_TOP = 10
UP_CHECK_ATTEMPTS = 3
_BYTES_PER_MB = 10**6
EXIT_CORRUPTED = 1
EXIT_NOT_ROOT = 2
EXIT_TARGET_MISSED = 3


class Figure(StrEnum):
    """One figure of issue 4, in the order it is measured over each tunnel."""

    PING = "ping"
    STREAM = "stream"
    CPU = "cpu"
    REVERSE = "reverse"
    PARALLEL = "parallel"


class Extra(StrEnum):
    """What the benchmark does over one more pilotif tunnel, beside the pairs."""

    SHA256 = "sha256"
    PROFILE = "profile"


@dataclass(frozen=True)
class Target:
    """What issue 14 asks of a figure: ratio pilotif / reference at least or at most."""

    unit: str
    higher_is_better: bool
    ratio: float

    def met(self, ratio: float) -> bool:
        """Whether a ratio pilotif / reference meets the target."""
        return ratio >= self.ratio if self.higher_is_better else ratio <= self.ratio

    def __str__(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.ratio:g}x"


TARGETS = {
    Figure.PING: Target("ms RTT", higher_is_better=False, ratio=1.0),
    Figure.STREAM: Target("Mbit/s", higher_is_better=True, ratio=1.3),
    Figure.CPU: Target("CPU s/GB", higher_is_better=False, ratio=1.0),
    Figure.REVERSE: Target("Mbit/s", higher_is_better=True, ratio=1.3),
    Figure.PARALLEL: Target("Mbit/s", higher_is_better=True, ratio=1.3),
}
TEN_RULE_POLICY = """\
default deny
allow * 5201/tcp
allow * icmp
allow * 8080/tcp
allow * 8443/tcp
allow * 9000-9100/tcp
allow * 53/udp
allow * 5353/udp
allow * 60000-61000/udp
deny * 22/tcp
deny * 23/tcp
"""
"""iperf3's port, ping, and eight rules the tests never use (ten in all)."""


@dataclass(frozen=True)
class Variant:
    """One kind of tunnel of a pair (None: no tunnel, the raw veth)."""

    label: str
    kind: NodeKind | None
    policy: str | None = None


PILOTIF = Variant("pilotif", NodeKind.PILOTIF)
REFERENCE = Variant("wg-go 2023", NodeKind.WIREGUARD_GO_2023)
WIREGUARD_GO_2022 = Variant("wg-go 2022", NodeKind.WIREGUARD_GO)
NEBULA = Variant("nebula", NodeKind.NEBULA)
RAW_VETH = Variant("raw veth", None)
PILOTIF_POLICY = Variant("pilotif+policy", NodeKind.PILOTIF, TEN_RULE_POLICY)
VARIANTS = (PILOTIF, REFERENCE, WIREGUARD_GO_2022, NEBULA, RAW_VETH)
POLICY_COST_LIMIT = 0.05
"""Issue 11: a ten-rule policy costs at most this share of any figure."""


@dataclass(frozen=True)
class Sample:
    """One figure measured over one tunnel."""

    variant: Variant
    figure: Figure
    value: float


def _measure(
    a: LabHost,
    b: LabHost,
    figures: list[Figure],
    time_s: int,
    report: Callable[[str], None],
    address: str | None = None,
) -> dict[Figure, float]:
    """The chosen figures over the tunnel that is up between A and B (to B's `address`
    instead of its overlay address: the raw veth)."""
    values: dict[Figure, float] = {}
    if Figure.PING in figures:
        rtt = ping_rtt(a, b, address)
        values[Figure.PING] = rtt.average_ms
        report(
            f"ping average {rtt.average_ms:.3f} ms, median {rtt.median_ms:.3f} ms, lost {rtt.lost}"
        )
    if Figure.STREAM in figures or Figure.CPU in figures:
        run = iperf(a, b, time_s, address=address)
        values[Figure.STREAM] = run.megabits_per_s
        if address is None:
            values[Figure.CPU] = run.cpu_s_per_gb
        report(
            f"stream {run.megabits_per_s:7.1f} Mbit/s, retransmits {run.retransmits}, "
            f"daemons {run.daemon_cpu_s:.2f} CPU s = {run.cpu_s_per_gb:.2f} CPU s/GB "
            f"(user/system s/GB: sender {run.client_side_cpu.user_s / run.gigabytes:.2f}/"
            f"{run.client_side_cpu.system_s / run.gigabytes:.2f}, receiver "
            f"{run.server_side_cpu.user_s / run.gigabytes:.2f}/"
            f"{run.server_side_cpu.system_s / run.gigabytes:.2f})"
        )
    if Figure.REVERSE in figures:
        run = iperf(a, b, time_s, "-R", address=address)
        values[Figure.REVERSE] = run.megabits_per_s
        report(f"reverse {run.megabits_per_s:7.1f} Mbit/s, retransmits {run.retransmits}")
    if Figure.PARALLEL in figures:
        run = iperf(a, b, time_s, "-P", str(PARALLEL_STREAMS), address=address)
        values[Figure.PARALLEL] = run.megabits_per_s
        report(f"parallel {run.megabits_per_s:7.1f} Mbit/s, retransmits {run.retransmits}")
    return {figure: value for figure, value in values.items() if figure in figures}


def _check_up(a: LabHost, b: LabHost, kind: NodeKind) -> None:
    """Ping through the new tunnel; a failed check is retried (and said) before giving up."""
    for attempt in range(1, UP_CHECK_ATTEMPTS + 1):
        result = ping(a.namespace, b.addresses.overlay_v4)
        if result.all_answered:
            return
        print(
            f"the {kind} tunnel lost pings on check {attempt} of {UP_CHECK_ATTEMPTS}: {result}",
            flush=True,
        )
    raise LabError(f"the {kind} tunnel does not answer ping")


def _pairs(
    a: LabHost,
    b: LabHost,
    figures: list[Figure],
    pairs: int,
    time_s: int,
    variants: tuple[Variant, ...],
) -> list[Sample]:
    samples: list[Sample] = []
    for number in range(1, pairs + 1):
        for variant in variants:
            kind = variant.kind

            def report(line: str, label: str = variant.label, number: int = number) -> None:
                print(f"pair {number} {label:<15} {line}", flush=True)

            if kind is None:
                values = _measure(a, b, figures, time_s, report, b.addresses.underlay)
            else:
                with tunnel((kind, kind), (a, b), preshared_key=False, policy=variant.policy):
                    _check_up(a, b, kind)
                    values = _measure(a, b, figures, time_s, report)
            samples += [Sample(variant, figure, value) for figure, value in values.items()]
    return samples


def _median(samples: list[Sample], variant: Variant, figure: Figure) -> float | None:
    values = [s.value for s in samples if s.variant == variant and s.figure is figure]
    return statistics.median(values) if values else None


def _summary(samples: list[Sample], figures: list[Figure], variants: tuple[Variant, ...]) -> bool:
    """Print each implementation's median per figure, the ratio pilotif / reference with
    its target (and the policy's cost, if measured); whether every target is met."""
    others = [v for v in variants if v not in (PILOTIF, PILOTIF_POLICY)]
    head = f"\n{'figure':<9} {'unit':<9} {PILOTIF.label:>10}"
    head += "".join(f" {v.label:>11}" for v in others)
    head += f"  {'ratio':>6}  target  met"
    with_policy = PILOTIF_POLICY in variants
    print(head + (f"  {'+policy':>10}  cost" if with_policy else ""))
    all_met = True
    for figure in figures:
        target = TARGETS[figure]
        ours, theirs = _median(samples, PILOTIF, figure), _median(samples, REFERENCE, figure)
        assert ours is not None and theirs is not None
        ratio = ours / theirs
        met = target.met(ratio)
        all_met = all_met and met
        line = f"{figure:<9} {target.unit:<9} {ours:>10.3f}"
        for variant in others:
            value = _median(samples, variant, figure)
            line += f" {value:>11.3f}" if value is not None else f" {'-':>11}"
        line += f"  {ratio:5.2f}x  {target!s:<6}  {'yes' if met else 'NO '}"
        if with_policy:
            filtered = _median(samples, PILOTIF_POLICY, figure)
            assert filtered is not None
            worse = ours / filtered - 1 if target.higher_is_better else filtered / ours - 1
            cheap = worse <= POLICY_COST_LIMIT
            all_met = all_met and cheap
            line += f"  {filtered:>10.3f} {worse:+5.1%} {'ok' if cheap else 'TOO MUCH'}"
        print(line)
    return all_met


def _print_profile(role: str, raw: Path) -> None:
    total, entries = self_time(raw)
    print(f"\n{role} daemon: {total} busy samples, top {PROFILE_TOP} by self time")
    for entry in entries[:PROFILE_TOP]:
        print(f"  {entry.share:6.1%} {entry.samples:6d}  {entry.function}")


def _extras(a: LabHost, b: LabHost, extras: list[Extra], time_s: int, transfer_mb: int) -> bool:
    """The sha256 check and the profile over one pilotif tunnel; whether the bytes arrived."""
    intact = True
    with tunnel((NodeKind.PILOTIF, NodeKind.PILOTIF), (a, b), preshared_key=False) as nodes:
        _check_up(a, b, NodeKind.PILOTIF)
        if Extra.SHA256 in extras:
            result = checked_transfer(a, b, transfer_mb * _BYTES_PER_MB)
            intact = result.intact
            print(
                f"\nsha256: {result.sent_bytes} bytes sent, {result.received_bytes} received, "
                f"sha256 {'matches' if intact else 'DIFFERS'} ({result.sent_sha256[:16]}...), "
                f"{result.megabits_per_s:.1f} Mbit/s"
            )
        if Extra.PROFILE in extras:
            with tempfile.TemporaryDirectory(prefix="pf-profile-") as directory:
                raws = {role: Path(directory) / f"{role}.raw" for role in ("sending", "receiving")}
                recorders = []
                for node, raw in zip(nodes, raws.values(), strict=True):
                    assert isinstance(node, PilotifNode)
                    pid = node.pid()
                    if pid is None:
                        raise LabError("the pilotif daemon wrote no PID file")
                    recorders.append(start_record(pid, time_s, raw))
                run = iperf(a, b, time_s)
                for recorder in recorders:
                    wait_record(recorder, time_s)
                print(
                    f"\nprofile: py-spy record --nonblocking --rate 100 --format raw -d {time_s} "
                    f"on both pilotif daemons during one stream test "
                    f"({run.megabits_per_s:.1f} Mbit/s while sampled)"
                )
                for role, raw in raws.items():
                    _print_profile(role, raw)
    return intact


def main() -> int:
    """Run the pairs and the extras, print every run, the summary and the profile."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--time", type=int, default=DEFAULT_TIME_S, help="seconds per iperf3 test")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="runs of each")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*Figure, *Extra],
        metavar="WHAT",
        help=f"measure only these (default: all of {', '.join([*Figure, *Extra])})",
    )
    parser.add_argument(
        "--transfer-mb", type=int, default=DEFAULT_TRANSFER_MB, help="size of the sha256 transfer"
    )
    parser.add_argument(
        "--policy", action="store_true", help="also pilotif with a ten-rule port policy"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the benchmark builds network namespaces and needs root: run it with sudo")
        return EXIT_NOT_ROOT
    chosen = set(args.only or [*Figure, *Extra])
    figures = [figure for figure in Figure if figure in chosen]
    extras = [extra for extra in Extra if extra in chosen]

    print(
        f"pilotif vs wireguard-go 0.0.20231211 (and 0.0.20220316, Nebula 1.9.3, the raw veth),"
        f" MTU {TUNNEL_MTU}, iperf3 -t {args.time}, {args.pairs} pairs,"
        f" ping -c {PING_COUNT} -i {PING_INTERVAL_S}, {os.cpu_count()} CPUs",
        flush=True,
    )
    all_met = True
    intact = True
    with host_pair() as (a, b):
        if figures:
            variants = VARIANTS + ((PILOTIF_POLICY,) if args.policy else ())
            samples = _pairs(a, b, figures, args.pairs, args.time, variants)
            all_met = _summary(samples, figures, variants)
        if extras:
            intact = _extras(a, b, extras, args.time, args.transfer_mb)
    if not intact:
        return EXIT_CORRUPTED
    return 0 if all_met else EXIT_TARGET_MISSED


if __name__ == "__main__":
    sys.exit(main())
