"""Faults, measured: what a user sees while the registry, the network or a daemon fails.

    sudo python3 bench/faults.py            # every fault below
    sudo python3 bench/faults.py --only registry-restart daemon-restart
    sudo python3 bench/faults.py --soak 30     # one fault every 20 s for 30 minutes

For each fault a fresh NAT lab (pilotif_lab.nat: a registry on the lab's internet, alpha
and beta behind two routers, cone for the direct path and symmetric for the relay) comes
up with alpha and beta trusting each other. While the fault happens, alpha pings beta
every 200 ms (`ping -D -O`) and sends beta a sha256-checked TCP stream. It prints per
fault and path: pings lost, the longest silence between two answers (the outage, in
seconds), how long until the daemons said the registry was back where that applies, and
whether the transfer arrived intact. The soak (`--soak MINUTES`) runs one lab for that
long, a fault every 20 s in turn, and prints the daemons' and the registry's memory and
open descriptors at the start and the end. Figures go to docs/BENCHMARKS.md with the
command that made them.
"""

import argparse
import itertools
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from pilotif_lab.checks import RunningTransfer, start_transfer
from pilotif_lab.nat import NatKind, NatLab, nat_lab, poll_until, trust

PING_INTERVAL_S = 0.2
SETTLE_S = 3.0
"""Pinging before and after the fault, so the silence is measured between answers."""
TRANSFER_BYTES = 20 * 2**20
TRANSFER_S = 45.0
"""How long the transfer lasts: longer than any fault here, so that each falls inside."""
REGISTRY_DOWN_S = 10.0
PATH_TIMEOUT_S = 15.0
ONLINE_TIMEOUT_S = 60.0
EXIT_NOT_ROOT = 2
NODES = ("alpha", "beta")
LOSSY_DELAY_MS = 20.0
LOSSY_SHARE = 0.05
ROAMED_HOST = 50
"""The LAN host number alpha moves to in the roam."""
QUIET_S = 130.0
SOAK_CYCLE_S = 20.0
"""One soak event (a peer leaves and rejoins, NAT mappings flush, the registry restarts,
in turn) per cycle."""
SOAK_REGISTRY_DOWN_S = 5.0
_REPLY = re.compile(r"^\[(?P<time>[\d.]+)\] \d+ bytes from .* icmp_seq=(?P<seq>\d+)")
_NO_ANSWER = re.compile(r"^\[[\d.]+\] no answer yet for icmp_seq=(?P<seq>\d+)")


@dataclass(frozen=True)
class Outcome:
    """What the probe and the transfer saw during one fault."""

    fault: str
    path: str
    lost: int
    sent: int
    longest_silence_s: float
    registry_back_s: float | None
    intact: bool


def _registry_online(lab: NatLab) -> bool:
    return all(lab[name].status()["node"]["registry_online"] for name in NODES)


def registry_restart(lab: NatLab) -> float | None:
    """The registry stops for REGISTRY_DOWN_S, long enough for the nodes to notice only
    if a heartbeat falls in it; returns how long after its return both said online."""
    lab.stop_registry()
    time.sleep(REGISTRY_DOWN_S)
    return _registry_back(lab)


def _registry_back(lab: NatLab) -> float:
    """Start the registry again; how long until both nodes say it is online."""
    lab.start_registry()
    back = time.monotonic()
    poll_until(lambda: True if _registry_online(lab) else None, ONLINE_TIMEOUT_S, "online")
    return time.monotonic() - back


def registry_outage_noticed(lab: NatLab) -> float | None:
    """The registry stops until both nodes say it is unreachable, then returns."""
    lab.stop_registry()
    poll_until(
        lambda: None if any(lab[n].status()["node"]["registry_online"] for n in NODES) else True,
        ONLINE_TIMEOUT_S,
        "both nodes noticing",
    )
    return _registry_back(lab)


def daemon_restart(lab: NatLab) -> float | None:
    """beta's daemon goes down and up again (`down`, `up`)."""
    lab["beta"].down()
    lab["beta"].restart()
    return None


def up_without_registry(lab: NatLab) -> float | None:
    """The registry stops; beta's daemon goes down and up again (from what it kept); the
    registry returns after REGISTRY_DOWN_S; returns how long until both said online."""
    lab.stop_registry()
    lab["beta"].down()
    lab["beta"].restart()
    time.sleep(REGISTRY_DOWN_S)
    return _registry_back(lab)


def roam(lab: NatLab) -> float | None:
    """alpha gets a new LAN address (as a laptop on another Wi-Fi would, behind the same
    router here): the old one goes, the new one and the default route come."""
    lab["alpha"].move_to(ROAMED_HOST)
    return None


def wan_change(lab: NatLab) -> float | None:
    """beta's router gets a new WAN address (a new lease from its ISP): nothing changes
    on beta's own host, and alpha keeps sending to the old address."""
    lab.renumber_router(1)
    return None


def quiet(lab: NatLab) -> float | None:
    """Nothing happens for QUIET_S, across the sessions' rekey at 120 s (both sides
    initiated at the punch, so both rekey at once)."""
    del lab
    time.sleep(QUIET_S)
    return None


def lossy_link(lab: NatLab) -> float | None:
    """alpha's router is 20 ms from the internet and loses 5% of frames each way for the
    whole run (the lab is built so): nothing happens here."""
    del lab
    return None


def nat_flush(lab: NatLab) -> float | None:
    """Both routers forget every NAT mapping (`conntrack -F`)."""
    for router in lab.routers:
        router.namespace.run("conntrack", "-F", check=False)
    return None


FAULTS: dict[str, Callable[[NatLab], float | None]] = {
    "registry-restart": registry_restart,
    "registry-outage": registry_outage_noticed,
    "daemon-restart": daemon_restart,
    "up-without-registry": up_without_registry,
    "roam": roam,
    "nat-flush": nat_flush,
    "wan-change": wan_change,
    "quiet": quiet,
    "lossy-link": lossy_link,
}
LAB_OPTIONS: dict[str, dict[str, tuple[float, ...]]] = {
    "lossy-link": {"wan_delay_ms": (LOSSY_DELAY_MS,), "wan_loss": (LOSSY_SHARE,)},
}
"""Faults that are a property of the lab for the whole run rather than an event."""
PATHS = {"direct": (NatKind.CONE, NatKind.CONE), "relay": (NatKind.SYMMETRIC, NatKind.SYMMETRIC)}


def _footprint(pid: int) -> tuple[int, int]:
    """(resident memory in KiB, open file descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _footprints(lab: NatLab) -> dict[str, tuple[int, int]]:
    pids = {name: lab[name].pid() for name in NODES} | {"registry": lab.registry_pid}
    return {name: _footprint(pid) for name, pid in pids.items() if pid is not None}


def _soak_event(lab: NatLab, cycle: int) -> str:
    """The cycle's fault: gamma leaves and rejoins, the NAT mappings flush, or the
    registry restarts."""
    kind = cycle % 3
    if kind == 0:
        lab["gamma"].down()
        lab["gamma"].restart()
        return "gamma left and rejoined"
    if kind == 1:
        nat_flush(lab)
        return "NAT mappings flushed"
    lab.stop_registry()
    time.sleep(SOAK_REGISTRY_DOWN_S)
    lab.start_registry()
    return "registry restarted"


def soak(minutes: float, workdir: Path) -> int:
    """alpha and beta (cone NATs, direct) and gamma (behind alpha's router) trusting
    alpha; a ping from alpha to beta every 200 ms; one fault per SOAK_CYCLE_S for
    `minutes`. Prints the daemons' and the registry's memory and descriptors per cycle,
    then start against end."""
    agents = (("alpha", 0), ("beta", 1), ("gamma", 0))
    with nat_lab(PATHS["direct"], agents, workdir) as lab:
        for agent in lab.agents.values():
            agent.up()
        trust(lab["alpha"], lab["beta"])
        trust(lab["gamma"], lab["alpha"])
        lab["alpha"].wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        beta_ip = lab["beta"].status()["node"]["ipv4"]
        # Half an hour of ping lines would fill a pipe (and stall ping): a file.
        probe_log = workdir / "probe.log"
        probe = lab["alpha"].namespace.spawn(
            "ping", "-n", "-D", "-O", "-i", str(PING_INTERVAL_S), beta_ip, log_path=probe_log
        )
        start = _footprints(lab)
        print(f"start: {start}", flush=True)
        deadline = time.monotonic() + minutes * 60
        cycle = 0
        while time.monotonic() < deadline:
            began = time.monotonic()
            event = _soak_event(lab, cycle)
            time.sleep(max(0.0, SOAK_CYCLE_S - (time.monotonic() - began)))
            print(f"cycle {cycle}: {event}; {_footprints(lab)}", flush=True)
            cycle += 1
        end = _footprints(lab)
        lab["alpha"].namespace.stop(probe)
    lost, sent, silence = _probe_result(probe_log.read_text())
    print(f"\nsoak: {minutes:g} min, {cycle} faults; alpha -> beta pings lost {lost}/{sent}")
    print(f"longest silence between answers: {silence:.1f} s")
    print(f"{'process':<10} {'RSS KiB start':>14} {'end':>8} {'fds start':>10} {'end':>5}")
    for name, (rss, fds) in start.items():
        end_rss, end_fds = end.get(name, (0, 0))
        print(f"{name:<10} {rss:>14} {end_rss:>8} {fds:>10} {end_fds:>5}")
    return 0


def _probe_result(output: str) -> tuple[int, int, float]:
    """(lost, sent, longest silence between answers) of `ping -D -O` output."""
    answered: dict[int, float] = {}
    asked: set[int] = set()
    for line in output.splitlines():
        if reply := _REPLY.match(line):
            answered[int(reply["seq"])] = float(reply["time"])
            asked.add(int(reply["seq"]))
        elif missing := _NO_ANSWER.match(line):
            asked.add(int(missing["seq"]))
    times = sorted(answered.values())
    silence = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    sent = max(asked, default=0)
    return sent - len(answered), sent, silence


def run_fault(fault: str, path: str, workdir: Path) -> Outcome:
    run_dir = workdir / f"{fault}-{path}"
    run_dir.mkdir()
    options = LAB_OPTIONS.get(fault, {})
    with nat_lab(PATHS[path], (("alpha", 0), ("beta", 1)), run_dir, **options) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        alpha.wait_for_path("beta", (path,), PATH_TIMEOUT_S)
        beta_ip = beta.status()["node"]["ipv4"]
        probe = alpha.namespace.spawn(
            "ping", "-n", "-D", "-O", "-i", str(PING_INTERVAL_S), beta_ip, pipes=True
        )
        transfer: RunningTransfer = start_transfer(
            alpha.namespace, beta.namespace, beta_ip, TRANSFER_BYTES, min_seconds=TRANSFER_S
        )
        time.sleep(SETTLE_S)
        registry_back_s = FAULTS[fault](lab)
        time.sleep(SETTLE_S)
        result = transfer.wait()
        probe.terminate()
        output, _ = probe.communicate(timeout=10)
        lost, sent, silence = _probe_result(output.decode())
        return Outcome(fault, path, lost, sent, silence, registry_back_s, result.intact)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(FAULTS), metavar="FAULT")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument(
        "--soak", type=float, metavar="MINUTES", help="run the soak for MINUTES instead"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the benchmark builds network namespaces and needs root: run it with sudo")
        return EXIT_NOT_ROOT
    if args.soak is not None:
        with TemporaryDirectory(prefix="pilotif-soak-") as tmp:
            return soak(args.soak, Path(tmp))
    outcomes = []
    with TemporaryDirectory(prefix="pilotif-faults-") as tmp:
        for fault in args.only or list(FAULTS):
            for path in args.paths:
                outcome = run_fault(fault, path, Path(tmp))
                outcomes.append(outcome)
                print(outcome, flush=True)
    print()
    header = f"{'fault':<18} {'path':<7} {'pings lost':>12} {'silence s':>10}"
    print(f"{header} {'registry back s':>16} intact")
    for o in outcomes:
        back = "" if o.registry_back_s is None else f"{o.registry_back_s:.1f}"
        print(
            f"{o.fault:<18} {o.path:<7} {f'{o.lost}/{o.sent}':>12} "
            f"{o.longest_silence_s:>10.1f} {back:>16} {'yes' if o.intact else 'NO'}"
        )
    return 0 if all(o.intact for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
