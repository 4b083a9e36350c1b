"""A registry under the load of many nodes, over UDP (issue 13).

    python3 bench/registry_load.py --nodes 100000 [--database URL | --postgresql] [--json]

Starts a real registry (`pilotif registry`, SQLite in a temporary state directory, or
the PostgreSQL database at URL) on loopback and runs NODES simulated nodes against it,
each with its own key and UDP socket and the node's own sans-IO `RegistryLink` (sealed
requests, cookies, retries), in one process:

1. registration: every node registers (at most `--window` at once, as a swarm that
   starts together would); registrations/s over the first and the last tenth;
2. heartbeats: for `--measure-s` seconds every node registers again every
   `--heartbeat-s` seconds (the node's REGISTER_INTERVAL_S), spread evenly: the round
   trip of each (p50/p99/max), the registry's CPU and memory;
3. one registration at that size: `--probes` new nodes one after another (p50, p99).

With `--replicas N` (PostgreSQL only) N registry processes share the database; node i
starts at replica i mod N and is given all of them. `--kill-replica-at S` kills the
second replica (SIGKILL) S seconds into the heartbeats. The survivor finds it dead
within 3 s and tells its nodes to come (`use_replica`, paced); a node told, or whose own
heartbeat found the replica silent, registers with the survivor: `served_after_kill_s`
is how long after the kill each was answered there, `failover_s` how long from the
request (the notice, or the heartbeat that found the silence) to that answer.

`dropped` counts the datagrams the registry's socket dropped (the kernel's count for
that socket) plus the heartbeats that needed a second attempt. Nodes share a source
address 16 at a time, below the registry's limit of new nodes per address. Run it on a
quiet machine: the registry and this process share its cores.
"""

import argparse
import contextlib
import gc
import heapq
import json
import multiprocessing
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pilotif_lab.postgres import throwaway_postgres

from pilotif.node.registry_link import (
    REGISTER_INTERVAL_S,
    GaveUp,
    MoveAsked,
    RegistryLink,
    Reply,
    SwitchedRegistry,
)
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.keys import decode_key

NODES_PER_ADDRESS = 16
"""Below the registry's NEW_NODES_BURST (20 new nodes per address)."""
PROBE_GROUPS = 0x800000
"""Probe nodes send from 127.128.0.0/9, apart from the swarm's addresses."""
RETRY_CHECK_S = 0.1
STARTUP_TIMEOUT_S = 20.0


@dataclass
class SimulatedNode:
    """One node: its socket, its link and the request it waits for."""

    number: int
    hostname: str
    sock: socket.socket
    link: RegistryLink
    waiting: int | None = None
    sent_s: float = 0.0
    retried: bool = False
    switched: bool = False


@dataclass
class Results:
    """What one run measured."""

    nodes: int
    registration_s: float = 0.0
    registrations_per_s: float = 0.0
    registrations_per_s_first_tenth: float = 0.0
    registrations_per_s_last_tenth: float = 0.0
    heartbeats: int = 0
    heartbeat_ms: list[float] = field(default_factory=list)
    heartbeats_retried: int = 0
    gave_up: int = 0
    socket_drops: int = 0
    registry_cpu_percent: float = 0.0
    registry_rss_mib: float = 0.0
    new_registration_ms: list[float] = field(default_factory=list)
    replicas: int = 1
    failover_s: list[float] = field(default_factory=list)
    served_after_kill_s: list[float] = field(default_factory=list)
    nodes_told: int = 0

    def summary(self) -> dict[str, Any]:
        beats = sorted(self.heartbeat_ms)
        probes = sorted(self.new_registration_ms)
        return {
            "nodes": self.nodes,
            "registration_s": round(self.registration_s, 1),
            "registrations_per_s": round(self.registrations_per_s),
            "registrations_per_s_first_tenth": round(self.registrations_per_s_first_tenth),
            "registrations_per_s_last_tenth": round(self.registrations_per_s_last_tenth),
            "heartbeats": self.heartbeats,
            "heartbeat_p50_ms": _round(_percentile(beats, 50)),
            "heartbeat_p99_ms": _round(_percentile(beats, 99)),
            "heartbeat_max_ms": _round(beats[-1] if beats else 0.0),
            "dropped": self.socket_drops + self.heartbeats_retried + self.gave_up,
            "socket_drops": self.socket_drops,
            "heartbeats_retried": self.heartbeats_retried,
            "gave_up": self.gave_up,
            "registry_cpu_percent": round(self.registry_cpu_percent, 1),
            "registry_rss_mib": round(self.registry_rss_mib, 1),
            "new_registration_p50_ms": _round(_percentile(probes, 50)),
            "new_registration_p99_ms": _round(_percentile(probes, 99)),
            "replicas": self.replicas,
            "nodes_failed_over": len(self.failover_s),
            "failover_p50_s": _round(_percentile(sorted(self.failover_s), 50)),
            "failover_max_s": _round(max(self.failover_s, default=0.0)),
            "nodes_told_to_move": self.nodes_told,
            "served_after_kill_p50_s": _round(_percentile(sorted(self.served_after_kill_s), 50)),
            "served_after_kill_max_s": _round(max(self.served_after_kill_s, default=0.0)),
        }


def _percentile(ordered: list[float], percent: int) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, len(ordered) * percent // 100)]


def _round(value: float) -> float:
    return round(value, 2)


class Swarm:
    """The simulated nodes and one epoll loop over their sockets."""

    def __init__(self, registries: list[tuple[str, int]], registry_key: bytes, first: int) -> None:
        self.registries = registries
        self.first = first
        self.registry_key = registry_key
        self.nodes: list[SimulatedNode] = []
        self.selector = selectors.EpollSelector()
        self.waiting: set[int] = set()
        self.latencies: list[float] | None = None
        self.failovers: list[float] = []
        self.served_after_kill: list[float] = []
        self.told = 0
        self.kill_at: float | None = None
        self.retried = 0
        self.gave_up = 0

    def add(self, hostname: str | None = None) -> SimulatedNode:
        """A new node, named `load-NUMBER` unless `hostname` says otherwise."""
        number = len(self.nodes)
        group = (self.first + number) // NODES_PER_ADDRESS + 1
        if hostname is not None:
            group |= PROBE_GROUPS
        address = f"127.{group >> 16 & 0xFF}.{group >> 8 & 0xFF}.{group & 0xFF}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sock.setblocking(False)
        link = RegistryLink(
            generate_private_key(),
            # Probes (named) go to the first replica, which is never the one killed.
            self.registries[0 if hostname else (self.first + number) % len(self.registries)],
            self.registry_key,
            first_counter=0,
            replicas=tuple(self.registries),
        )
        node = SimulatedNode(number, hostname or f"load-{self.first + number}", sock, link)
        self.nodes.append(node)
        self.selector.register(sock, selectors.EVENT_READ, node)
        return node

    def register(self, node: SimulatedNode, now: float) -> None:
        fields = {"hostname": node.hostname, "tags": ["bench"], "lan": []}
        node.waiting = node.link.request("register", fields, now)
        node.sent_s = now
        node.retried = node.switched = False
        self.waiting.add(node.number)
        self._flush(node)

    def _flush(self, node: SimulatedNode) -> None:
        for datagram, endpoint in node.link.outgoing:
            with contextlib.suppress(BlockingIOError):
                node.sock.sendto(datagram, endpoint)
        node.link.outgoing.clear()

    def poll(self, timeout: float) -> list[SimulatedNode]:
        """Read what arrived within `timeout`; the nodes whose request was answered."""
        answered: list[SimulatedNode] = []
        for key, _ in self.selector.select(timeout):
            node: SimulatedNode = key.data
            now = time.monotonic()
            while True:
                try:
                    data, source = node.sock.recvfrom(2048)
                except BlockingIOError:
                    break
                for event in node.link.receive(data, now, source):
                    if isinstance(event, MoveAsked) and not node.switched:
                        self._move(node, event, now)
                    if isinstance(event, Reply) and event.request_id == node.waiting:
                        if event.message.get("ok") is not True:
                            raise SystemExit(f"registration refused: {event.message}")
                        self._answered(node, now, answered)
            self._flush(node)
        return answered

    def _move(self, node: SimulatedNode, asked: MoveAsked, now: float) -> None:
        """What the node core does when told its replica died: go to the survivor and
        register there at once."""
        self.told += 1
        node.link.switch_to(asked.endpoint, now)
        if node.waiting is None:
            self.register(node, now)
        node.sent_s = now
        node.switched = True

    def _answered(self, node: SimulatedNode, now: float, answered: list[SimulatedNode]) -> None:
        if node.switched:
            self.failovers.append(now - node.sent_s)
            if self.kill_at is not None:
                self.served_after_kill.append(now - self.kill_at)
        elif node.retried:
            self.retried += 1
        elif self.latencies is not None:
            self.latencies.append((now - node.sent_s) * 1000)
        node.waiting = None
        self.waiting.discard(node.number)
        answered.append(node)

    def retry(self, now: float) -> None:
        """Retries that are due (a lost datagram), and requests given up."""
        for number in list(self.waiting):
            node = self.nodes[number]
            events = node.link.handle_timer(now)
            node.retried = node.retried or bool(node.link.outgoing)
            for event in events:
                if isinstance(event, SwitchedRegistry):
                    node.switched = True
                elif isinstance(event, GaveUp):
                    self.gave_up += 1
                    node.waiting = None
                    self.waiting.discard(number)
            self._flush(node)


def _start_registry(
    state_dir: Path, port: int, database: str | None
) -> tuple[subprocess.Popen[bytes], bytes]:
    command = [
        sys.executable,
        "-m",
        "pilotif",
        "registry",
        "--listen",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state_dir),
        "--network",
        "100.64.0.0/10",
        "--log-format",
        "json",
    ]
    if database is not None:
        command += ["--database", database]
    log = open(state_dir.parent / "registry.log", "wb")  # noqa: SIM115 (the child writes it)
    process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in (state_dir.parent / "registry.log").read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "registry_started":
                    return process, decode_key(event["public_key"])
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit((state_dir.parent / "registry.log").read_text() or "registry did not start")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _socket_drops(pid: int, port: int) -> int:
    """The kernel's drop count of the registry's UDP socket (last column of
    /proc/PID/net/udp)."""
    for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[-1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _register_all(swarm: Swarm, window: int) -> list[float]:
    """Register every node of the swarm, `window` at a time; when each was answered."""
    done_at: list[float] = []
    next_node = 0
    last_retry = time.monotonic()
    while len(done_at) < len(swarm.nodes):
        while next_node < len(swarm.nodes) and len(swarm.waiting) < window:
            swarm.register(swarm.nodes[next_node], time.monotonic())
            next_node += 1
        for _ in swarm.poll(RETRY_CHECK_S):
            done_at.append(time.monotonic())
        now = time.monotonic()
        if now - last_retry >= RETRY_CHECK_S:
            swarm.retry(now)
            last_retry = now
        if swarm.gave_up:
            raise SystemExit(f"{swarm.gave_up} registrations got no answer")
    return done_at


def _heartbeats(
    swarm: Swarm, first: int, total: int, start: float, interval_s: float, measure_s: float
) -> list[float]:
    """Every node registers again every `interval_s` from `start` (node number `first +
    i` of `total` at its share of the interval) for `measure_s`; the round trips."""
    due = [(start + interval_s * (first + i) / total, i) for i in range(len(swarm.nodes))]
    heapq.heapify(due)
    latencies: list[float] = []
    swarm.latencies = latencies
    end = start + measure_s
    last_retry = start
    while True:
        now = time.monotonic()
        while due and due[0][0] <= now and due[0][0] < end:
            slot, number = heapq.heappop(due)
            node = swarm.nodes[number]
            if node.waiting is None:
                swarm.register(node, now)
            heapq.heappush(due, (slot + interval_s, number))
        if now >= end and (not swarm.waiting or now >= end + 10):
            break
        timeout = min(max(due[0][0] - now, 0.0), RETRY_CHECK_S) if due else RETRY_CHECK_S
        swarm.poll(timeout)
        now = time.monotonic()
        if now - last_retry >= RETRY_CHECK_S:
            swarm.retry(now)
            last_retry = now
    swarm.latencies = None
    return latencies


def _probe_new_registrations(swarm: Swarm, probes: int) -> list[float]:
    """Register `probes` new nodes one after another; the time of each (its cookie
    round trip included, as for any node's first message)."""
    timings: list[float] = []
    for number in range(probes):
        node = swarm.add(f"probe-{number}")
        swarm.register(node, time.monotonic())
        while node.waiting is not None:
            swarm.poll(RETRY_CHECK_S)
            swarm.retry(time.monotonic())
        timings.append((time.monotonic() - node.sent_s) * 1000)
    return timings


def _worker(
    conn: Connection, first: int, count: int, registries: list[tuple[str, int]], key: bytes
) -> None:
    """One process's share of the nodes (a process may hold only so many sockets),
    driven by commands from the bench: ("register", window), ("heartbeats", start,
    interval_s, measure_s, total), ("probe", count), ("stop",)."""
    swarm = Swarm(registries, key, first)
    for _ in range(count):
        swarm.add()
    # Our own collector's pauses would count as the registry's latency.
    gc.freeze()
    gc.disable()
    conn.send("ready")
    while True:
        command = conn.recv()
        if command[0] == "register":
            conn.send(_register_all(swarm, command[1]))
        elif command[0] == "heartbeats":
            _, start, interval_s, measure_s, total, swarm.kill_at = command
            latencies = _heartbeats(swarm, first, total, start, interval_s, measure_s)
            conn.send(
                (
                    latencies,
                    swarm.retried,
                    swarm.gave_up,
                    swarm.failovers,
                    swarm.served_after_kill,
                    swarm.told,
                )
            )
        elif command[0] == "probe":
            conn.send(_probe_new_registrations(swarm, command[1]))
        else:
            for node in swarm.nodes:
                node.sock.close()
            conn.send("stopped")
            return


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str | None]:
    """The --database URL, a throwaway PostgreSQL server's (--postgresql), or None."""
    if not args.postgresql:
        yield args.database
        return
    with throwaway_postgres() as server:
        yield server.create_database("registry_load")


@contextlib.contextmanager
def _registries(
    database: str | None, count: int
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[int], bytes]]:
    """`count` registry processes (replicas when there are several) on loopback."""
    with tempfile.TemporaryDirectory(prefix="pilotif-load-") as tmp:
        processes: list[subprocess.Popen[bytes]] = []
        ports: list[int] = []
        try:
            for index in range(count):
                ports.append(_free_port())
                process, key = _start_registry(Path(tmp) / f"state-{index}", ports[-1], database)
                processes.append(process)
            yield processes, ports, key
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _registry_totals(
    processes: list[subprocess.Popen[bytes]], ports: list[int]
) -> tuple[float, int]:
    """CPU seconds and socket drops of the registries still running, summed."""
    cpu, drops = 0.0, 0
    for process, port in zip(processes, ports, strict=True):
        if process.poll() is None:
            cpu += _cpu_seconds(process.pid)
            drops += _socket_drops(process.pid, port)
    return cpu, drops


def run(args: argparse.Namespace) -> Results:
    if args.replicas > 1 and not (args.database or args.postgresql):
        raise SystemExit("--replicas needs PostgreSQL (--database URL or --postgresql)")
    per_process = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (per_process + 1024,) * 2)
    results = Results(args.nodes, replicas=args.replicas)
    with (
        _database(args) as database,
        _registries(database, args.replicas) as (processes, ports, key),
    ):
        registries = [("127.0.0.1", port) for port in ports]
        workers: list[tuple[multiprocessing.Process, Connection]] = []
        for first in range(0, args.nodes, per_process):
            ours, theirs = multiprocessing.Pipe()
            count = min(per_process, args.nodes - first)
            worker = multiprocessing.Process(
                target=_worker, args=(theirs, first, count, registries, key), daemon=True
            )
            worker.start()
            workers.append((worker, ours))
        try:
            for _, conn in workers:
                conn.recv()
            started = time.monotonic()
            done_at: list[float] = []
            for _, conn in workers:
                conn.send(("register", max(1, args.window // len(workers))))
            for _, conn in workers:
                done_at += conn.recv()
            done_at.sort()
            _registration_rates(results, started, done_at)
            cpu_before, drops_before = _registry_totals(processes, ports)
            start = time.monotonic() + 1.0
            kill_at = None if args.kill_replica_at is None else start + args.kill_replica_at
            for _, conn in workers:
                command = ("heartbeats", start, args.heartbeat_s, args.measure_s, args.nodes)
                conn.send((*command, kill_at))
            if kill_at is not None:
                time.sleep(max(0.0, kill_at - time.monotonic()))
                cpu_killed, drops_killed = _registry_totals(processes[1:2], ports[1:2])
                processes[1].kill()
                processes[1].wait()
                cpu_before -= cpu_killed
                drops_before -= drops_killed
            for _, conn in workers:
                latencies, retried, gave_up, failovers, served, told = conn.recv()
                results.heartbeat_ms += latencies
                results.heartbeats_retried += retried
                results.gave_up += gave_up
                results.failover_s += failovers
                results.served_after_kill_s += served
                results.nodes_told += told
            cpu_after, drops_after = _registry_totals(processes, ports)
            results.registry_cpu_percent = 100 * (cpu_after - cpu_before) / args.measure_s
            results.registry_rss_mib = max(_rss_mib(p.pid) for p in processes if p.poll() is None)
            results.socket_drops = drops_after - drops_before
            results.heartbeats = (
                len(results.heartbeat_ms) + results.heartbeats_retried + len(results.failover_s)
            )
            workers[0][1].send(("probe", args.probes))
            results.new_registration_ms = workers[0][1].recv()
            for _, conn in workers:
                conn.send(("stop",))
                conn.recv()
        finally:
            for worker, _ in workers:
                worker.join(timeout=10)
                if worker.is_alive():
                    worker.kill()
    return results


def _registration_rates(results: Results, started: float, done_at: list[float]) -> None:
    count = len(done_at)
    results.registration_s = done_at[-1] - started
    results.registrations_per_s = count / results.registration_s
    tenth = max(2, count // 10)
    results.registrations_per_s_first_tenth = tenth / max(done_at[tenth - 1] - started, 1e-9)
    results.registrations_per_s_last_tenth = (tenth - 1) / max(done_at[-1] - done_at[-tenth], 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--database", help="postgresql://... (default: SQLite)")
    parser.add_argument(
        "--postgresql", action="store_true", help="on a throwaway PostgreSQL server"
    )
    parser.add_argument("--heartbeat-s", type=float, default=REGISTER_INTERVAL_S)
    parser.add_argument("--measure-s", type=float, default=60.0)
    parser.add_argument("--window", type=int, default=64, help="registrations in flight")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=1, help="registry replicas (PostgreSQL)")
    parser.add_argument(
        "--kill-replica-at", type=float, help="kill the second replica S s into the heartbeats"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    summary = run(args).summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for name, value in summary.items():
            print(f"{name:>32}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
