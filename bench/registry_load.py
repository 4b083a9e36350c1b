"""A registry under the load of many nodes, over UDP (issue 13).

    python3 bench/registry_load.py --nodes 100000 [--database URL | --postgresql] [--json]

Starts a real registry (`pilotif registry`, SQLite in a temporary state directory, or
the PostgreSQL database at URL) on loopback and runs NODES simulated nodes against it,
each with its own key and UDP socket and the node's own sans-IO `RegistryLink` (sealed
requests, cookies, retries), in one process:

1. registration: every node registers (at most `--window` at once, as a swarm that
   starts together would); registrations/s over the first and the last tenth. A node
   heartbeats from the moment it is registered, as a node does: it registers again
   `--heartbeat-s` seconds (the node's REGISTER_INTERVAL_S, with its HEARTBEAT_JITTER)
   after each answer, so registration and heartbeats overlap;
2. heartbeats: then for `--measure-s` seconds more: the round trip of each heartbeat
   since the first registration (p50/p99/max: from the send to the moment the kernel
   queued the answer, its receive timestamp, so that a load process busy elsewhere
   does not count its own lateness; `steady_heartbeat_p99_ms`: of those sent once
   every node was registered), the registry's CPU and memory;
3. with `--registry-outage SECONDS`: every node online, the registry (every replica)
   is SIGKILLed and started again (same state, same ports) SECONDS later. A node whose request went
   unanswered REQUEST_ATTEMPTS times gives it up and, as the node does, probes the
   registry (a 36-byte key request, at the node's pauses: `probe_pause_s`, about a
   second at first, then a tenth of the outage so far, at most PROBE_MAX_S) until a probe
   is answered or the restarted registry tells it it is back (registry/recall.py), then
   registers; `outage_probes_per_node_s` is what a node
   sent per second while away (probes over the node-seconds from its give-up to the
   restart); `back_online_*_s` is how long after the restart each node that lost the
   registry was answered (`not_back_online`: never within `--return-s`),
   `return_gave_up` the requests sent after the restart and given up, and
   `return_heartbeat_p99_ms` the round trip of the requests sent after the restart,
   `busy_notices` how many "busy, retry after" notices the nodes took, `restart_ready_s`
   the restarted registry's own start-up (within `back_online_*_s`);
4. one registration at that size: `--probes` new nodes one after another (p50, p99).

With `--replicas N` (PostgreSQL only) N registry processes share the database; node i
starts at replica i mod N and is given all of them. `--kill-replica-at S` kills the
second replica (SIGKILL) S seconds into the heartbeats. The survivor finds it dead
within 3 s and tells its nodes to come (`use_replica`, paced); a node told, or whose own
heartbeat found the replica silent, registers with the survivor: `served_after_kill_s`
is how long after the kill each was answered there, `failover_s` how long from the
request (the notice, or the heartbeat that found the silence) to that answer.

`registry_counters` are what the registries counted of their drops and cheap answers
(busy notices, key requests left unanswered while behind, backlog full, cookie
replies), from the `registry_stopped` line each logs, and `urgent_wait_p50_us`,
`_p99_us`, `_max_us`: how long the datagrams a registry answered as it read them
(heartbeats on a kept channel, key requests) waited in its socket's queue, the
registry's own share of a heartbeat's round trip (the largest of the replicas'; of a
registry restarted after an outage, its second run's). `dropped` counts the UDP
datagrams the machine dropped for a full receive buffer while the heartbeats were
measured (the registry's socket's, and any load socket's: `socket_drops`), the requests
that needed a second attempt without a busy notice (`requests_retried`: lost once) and
those given up; a request answered "busy, retry after" and served at its next attempt is
load shed as the registry means to (`shed_then_served`), not a drop. Nodes share a
source address 16 at a time, each in a /24 of its own, below the registry's limits of
new nodes per address and per /24. Run it on a quiet machine: the registry and this
process share its cores (`--load-nice 10` runs the load processes, which stand for
100,000 other machines, below the registry).
"""

import argparse
import contextlib
import gc
import heapq
import json
import multiprocessing
import os
import random
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

from pilotif.control.shell import ANCILLARY_BYTES, SO_TIMESTAMPNS, kernel_arrival
from pilotif.node.registration import heartbeat_pause_s, probe_pause_s
from pilotif.node.registry_link import (
    REGISTER_INTERVAL_S,
    GaveUp,
    KeyAnswer,
    MoveAsked,
    RegistryLink,
    Reply,
    SwitchedRegistry,
)
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.keys import decode_key

NODES_PER_ADDRESS = 16
"""Below the registry's NEW_NODES_BURST (20 new nodes per address); each address is in a
/24 of its own (below NEW_NODES_IPV4_24_BURST)."""
PROBE_GROUPS = 0x8000
"""Probe nodes send from 127.128.0.0/9, apart from the swarm's addresses."""
RETRY_CHECK_S = 0.1
REGISTRY_COUNTERS = (
    "busy",
    "busy_behind",
    "key_request_behind",
    "backlog_full",
    "cookie_replies",
    "cookie_renewals",
    "stale_counter",
    "rate_limited",
    "new_key_rate_limited",
    "send_queue_full",
    "internal_error",
    "recalled",
    "recalled_back",
)
"""The registry's counters the bench reports (of its drops and answers instead of work)."""
IDLE_SLICE_S = 0.05
"""How long a worker drives its nodes between two looks for the bench's next command."""
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
    busy_before: int = 0
    """How many busy notices its link had taken when the request waited for was sent."""
    switched: bool = False
    beat: bool = False
    """The request waited for is a heartbeat (not the node's first registration)."""
    retry_s: float | None = None
    """When its link's next retry is due, as armed in the swarm's `retries`."""
    next_s: float | None = None
    """When the node registers again (its heartbeat, or its retry while the registry is
    away)."""
    lost_s: float | None = None
    """Since when the registry is silent to it (a request given up)."""
    probing: bool = False
    """The registry is away: `next_s` is the next probe, not a registration."""


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
    steady_heartbeat_ms: list[float] = field(default_factory=list)
    """Of heartbeat_ms, those sent once every node was registered."""
    requests_retried: int = 0
    """Requests (heartbeats, registrations) answered at a later attempt, without a busy
    notice: lost once."""
    shed_then_served: int = 0
    """Requests answered "busy, retry after" and served at their next attempt (the
    registry shedding load, not losing it)."""
    gave_up: int = 0
    socket_drops: int = 0
    registry_cpu_percent: float = 0.0
    registry_rss_mib: float = 0.0
    new_registration_ms: list[float] = field(default_factory=list)
    outage_s: float | None = None
    back_online_s: list[float] = field(default_factory=list)
    not_back_online: int = 0
    outage_gave_up: int = 0
    return_gave_up: int = 0
    return_heartbeat_ms: list[float] = field(default_factory=list)
    return_socket_drops: int = 0
    return_registry_cpu_percent: float = 0.0
    busy_notices: int = 0
    outage_probes: int = 0
    outage_probing_s: float = 0.0
    """Node-seconds spent probing before the restart (from a node's give-up on)."""
    restart_ready_s: float = 0.0
    """From the restart to the registry's `registry_started` (its own start-up, within
    back_online_*_s)."""
    replicas: int = 1
    registry_counters: dict[str, int] = field(default_factory=dict)
    """What the registries counted (REGISTRY_COUNTERS), from their logs at the end."""
    failover_s: list[float] = field(default_factory=list)
    served_after_kill_s: list[float] = field(default_factory=list)
    nodes_told: int = 0
    load_nice: int = 0

    def summary(self) -> dict[str, Any]:
        beats = sorted(self.heartbeat_ms)
        probes = sorted(self.new_registration_ms)
        return {
            "nodes": self.nodes,
            "load_nice": self.load_nice,
            "registration_s": round(self.registration_s, 1),
            "registrations_per_s": round(self.registrations_per_s),
            "registrations_per_s_first_tenth": round(self.registrations_per_s_first_tenth),
            "registrations_per_s_last_tenth": round(self.registrations_per_s_last_tenth),
            "heartbeats": self.heartbeats,
            "heartbeat_p50_ms": _round(_percentile(beats, 50)),
            "heartbeat_p99_ms": _round(_percentile(beats, 99)),
            "heartbeat_max_ms": _round(beats[-1] if beats else 0.0),
            "steady_heartbeat_p99_ms": _round(_percentile(sorted(self.steady_heartbeat_ms), 99)),
            "dropped": self.socket_drops + self.requests_retried + self.gave_up,
            "socket_drops": self.socket_drops,
            "requests_retried": self.requests_retried,
            "shed_then_served": self.shed_then_served,
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
            **self._outage_summary(),
            "registry_counters": self.registry_counters,
        }

    def _outage_summary(self) -> dict[str, Any]:
        if self.outage_s is None:
            return {}
        back = sorted(self.back_online_s)
        beats = sorted(self.return_heartbeat_ms)
        return {
            "registry_outage_s": self.outage_s,
            "restart_ready_s": _round(self.restart_ready_s),
            "nodes_back_online": len(back),
            "not_back_online": self.not_back_online,
            "back_online_p50_s": _round(_percentile(back, 50)),
            "back_online_p99_s": _round(_percentile(back, 99)),
            "back_online_max_s": _round(back[-1] if back else 0.0),
            "outage_gave_up": self.outage_gave_up,
            "return_gave_up": self.return_gave_up,
            "return_heartbeat_p50_ms": _round(_percentile(beats, 50)),
            "return_heartbeat_p99_ms": _round(_percentile(beats, 99)),
            "return_socket_drops": self.return_socket_drops,
            "return_registry_cpu_percent": round(self.return_registry_cpu_percent, 1),
            "busy_notices": self.busy_notices,
            "outage_probes": self.outage_probes,
            "outage_probes_per_node_s": _round(
                self.outage_probes / max(self.outage_probing_s, 1e-9)
            ),
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
        self.latencies: list[tuple[float, float]] = []
        """(sent at, round trip in ms) of each heartbeat answered at the first attempt."""
        self.interval_s = REGISTER_INTERVAL_S
        self.due: list[tuple[float, int]] = []
        """(when, node number): heartbeats; an entry counts if it is the node's next_s."""
        self.retries: list[tuple[float, int]] = []
        """(when, node number): retries of waiting requests; an entry counts if it is the
        node's retry_s (looking at every waiting node each RETRY_CHECK_S cost this process
        the CPU the registry needed once many waited)."""
        self.restart_at: float | None = None
        self.back_online: list[float] = []
        self.outage_gave_up = 0
        self.return_gave_up = 0
        self.failovers: list[float] = []
        self.served_after_kill: list[float] = []
        self.told = 0
        self.kill_at: float | None = None
        self.retried = 0
        self.shed = 0
        """Requests answered busy, then served at their next attempt."""
        self.gave_up = 0
        self.rng = random.Random()
        self.probes = 0
        """Probes sent while the registry was away (before its restart)."""
        self.probing_s = 0.0
        """Node-seconds from each give-up to the restart (the time those probes span)."""

    def add(self, hostname: str | None = None) -> SimulatedNode:
        """A new node, named `load-NUMBER` unless `hostname` says otherwise."""
        number = len(self.nodes)
        group = (self.first + number) // NODES_PER_ADDRESS + 1
        if hostname is not None:
            group |= PROBE_GROUPS
        # One /24 per address: the registry also limits new nodes per /24.
        address = f"127.{group >> 8 & 0xFF}.{group & 0xFF}.1"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Answers carry the time the kernel queued them: a worker busy elsewhere (six
        # share two cores with the registry) does not count its own lateness.
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
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

    def register(self, node: SimulatedNode, now: float, *, beat: bool = False) -> None:
        fields = {"hostname": node.hostname, "tags": ["bench"], "lan": []}
        node.waiting = node.link.request("register", fields, now)
        node.retried = node.switched = False
        node.busy_before = node.link.busy
        node.beat = beat
        self.waiting.add(node.number)
        self._flush(node)
        self._arm(node)
        # When it left: a wave of due heartbeats takes milliseconds to seal and send, and
        # the last of them counted that as the registry's latency.
        node.sent_s = time.monotonic()

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
            while True:
                try:
                    data, ancillary, _, source = node.sock.recvmsg(2048, ANCILLARY_BYTES)
                except BlockingIOError:
                    break
                # When it arrived, on the monotonic clock the requests were stamped with.
                now = time.monotonic()
                arrived = kernel_arrival(ancillary)
                if arrived is not None:
                    now -= min(max(time.time() - arrived, 0.0), now - node.sent_s)
                for event in node.link.receive(data, now, source):
                    if isinstance(event, KeyAnswer) and node.probing:
                        # The registry is back: register (as Registration._back does).
                        node.probing = False
                        node.next_s = None
                        if node.waiting is None:
                            self.register(node, now)
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
        elif node.retried and node.link.busy > node.busy_before:
            # Told "busy, retry after" and served when it came back: shed, not lost.
            self.shed += 1
        elif node.retried:
            self.retried += 1
        elif node.beat:
            self.latencies.append((node.sent_s, (now - node.sent_s) * 1000))
        if node.lost_s is not None and self.restart_at is not None and now >= self.restart_at:
            self.back_online.append(now - self.restart_at)
        node.lost_s = None
        node.waiting = None
        self.waiting.discard(node.number)
        self._schedule(node, now + heartbeat_pause_s(self.rng, self.interval_s))
        answered.append(node)

    def _schedule(self, node: SimulatedNode, at: float) -> None:
        node.next_s = at
        heapq.heappush(self.due, (at, node.number))

    def beat(self, now: float) -> float:
        """Send the heartbeats that are due; the time until the next one."""
        while self.due and self.due[0][0] <= now:
            at, number = heapq.heappop(self.due)
            node = self.nodes[number]
            if node.next_s != at:
                continue
            node.next_s = None
            if node.probing:
                self._probe(node, now)
            elif node.waiting is None:
                self.register(node, now, beat=True)
        return max(self.due[0][0] - now, 0.0) if self.due else RETRY_CHECK_S

    def _arm(self, node: SimulatedNode) -> None:
        node.retry_s = node.link.next_timer()
        if node.retry_s is not None:
            heapq.heappush(self.retries, (node.retry_s, node.number))

    def retry(self, now: float) -> None:
        """Retries that are due (a lost datagram), and requests given up."""
        while self.retries and self.retries[0][0] <= now:
            at, number = heapq.heappop(self.retries)
            node = self.nodes[number]
            if node.retry_s != at or node.waiting is None:
                continue
            events = node.link.handle_timer(now)
            node.retried = node.retried or bool(node.link.outgoing)
            for event in events:
                if isinstance(event, SwitchedRegistry):
                    node.switched = True
                elif isinstance(event, GaveUp):
                    self._gave_up(node, now)
            self._flush(node)
            if node.waiting is not None:
                self._arm(node)

    def _probe(self, node: SimulatedNode, now: float) -> None:
        node.link.probe()
        self._flush(node)
        if self.restart_at is None or now < self.restart_at:
            self.probes += 1
        assert node.lost_s is not None
        pause_s = probe_pause_s(now - node.lost_s, self.rng, len(self.registries))
        self._schedule(node, now + pause_s)

    def _gave_up(self, node: SimulatedNode, now: float) -> None:
        """As the node does when the registry is silent: offline, and probing it until
        it answers."""
        if self.restart_at is None:
            self.gave_up += 1
        elif node.sent_s >= self.restart_at:
            self.return_gave_up += 1
        else:
            self.outage_gave_up += 1
        node.waiting = None
        self.waiting.discard(node.number)
        if node.lost_s is None:
            node.lost_s = now
            if self.restart_at is not None and now < self.restart_at:
                self.probing_s += self.restart_at - now
        node.probing = True
        self._probe(node, now)

    def run_for(self, seconds: float) -> None:
        """Heartbeats, answers and retries for `seconds`."""
        end = time.monotonic() + seconds
        last_retry = time.monotonic()
        while (now := time.monotonic()) < end:
            timeout = min(self.beat(now), RETRY_CHECK_S, end - now)
            self.poll(timeout)
            now = time.monotonic()
            if now - last_retry >= RETRY_CHECK_S:
                self.retry(now)
                last_retry = now


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
    log = open(_log_path(state_dir), "wb")  # noqa: SIM115 (the child writes it)
    process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in _log_path(state_dir).read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "registry_started":
                    return process, decode_key(event["public_key"])
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(_log_path(state_dir).read_text() or "registry did not start")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _udp_receive_drops() -> int:
    """The machine's count of UDP datagrams dropped for a full receive buffer
    (RcvbufErrors in /proc/net/snmp): the registry's socket's drops, and any of the load
    sockets'. Reading the registry's own socket's count (/proc/PID/net/udp) lists all
    100,000 load sockets: that took the bench 8 s of half a CPU between the registration
    and the heartbeats, and every heartbeat of those seconds waited for it."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = (fields for fields in lines if fields[0] == "Udp:")
    return int(values[names.index("RcvbufErrors")])


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
        for node in swarm.poll(min(swarm.beat(time.monotonic()), RETRY_CHECK_S)):
            # Registered nodes heartbeat meanwhile: their answers are not registrations
            # (counted, they ended this loop with ~40% of 100,000 nodes never registered).
            if not node.beat:
                done_at.append(time.monotonic())
        # What was given up (a node then probes and registers once answered) is counted in
        # `gave_up`, not a reason to stop: the run says how much.
        now = time.monotonic()
        if now - last_retry >= RETRY_CHECK_S:
            swarm.retry(now)
            last_retry = now
    return done_at


def _probe_new_registrations(swarm: Swarm, probes: int) -> list[float]:
    """Register `probes` new nodes one after another; the time of each (its cookie
    round trip included, as for any node's first message)."""
    timings: list[float] = []
    for number in range(probes):
        node = swarm.add(f"probe-{number}")
        swarm.register(node, time.monotonic())
        while node.waiting is not None:
            swarm.poll(min(swarm.beat(time.monotonic()), RETRY_CHECK_S))
            swarm.retry(time.monotonic())
        timings.append((time.monotonic() - node.sent_s) * 1000)
    return timings


def _worker(
    conn: Connection,
    first: int,
    count: int,
    registries: list[tuple[str, int]],
    key: bytes,
    nice: int,
) -> None:
    """One process's share of the nodes (a process may hold only so many sockets),
    driven by commands from the bench: ("register", window, interval_s), ("heartbeats",
    measure_s, kill_at), ("outage", restart_at, return_s), ("probe", count), ("stop",);
    at `nice` (os.nice) beside the registry."""
    os.nice(nice)
    swarm = Swarm(registries, key, first)
    for _ in range(count):
        swarm.add()
    # Our own collector's pauses would count as the registry's latency.
    gc.freeze()
    gc.disable()
    conn.send("ready")
    while True:
        # Between commands the nodes live on (heartbeats, answers, retries): a worker
        # done registering its share waited silent for the others, and its nodes'
        # answers counted that wait as the registry's latency.
        while not conn.poll():
            swarm.run_for(IDLE_SLICE_S)
        command = conn.recv()
        if command[0] == "register":
            swarm.interval_s = command[2]
            conn.send(_register_all(swarm, command[1]))
        elif command[0] == "heartbeats":
            _, measure_s, swarm.kill_at = command
            swarm.run_for(measure_s)
            conn.send(
                (
                    swarm.latencies,
                    swarm.retried,
                    swarm.shed,
                    swarm.gave_up,
                    swarm.failovers,
                    swarm.served_after_kill,
                    swarm.told,
                )
            )
        elif command[0] == "outage":
            _, swarm.restart_at, run_s = command
            swarm.latencies = []
            swarm.run_for(run_s)
            restart = swarm.restart_at
            conn.send(
                (
                    swarm.back_online,
                    sum(node.lost_s is not None for node in swarm.nodes),
                    swarm.outage_gave_up,
                    swarm.return_gave_up,
                    [ms for sent, ms in swarm.latencies if sent >= restart],
                    sum(node.link.busy for node in swarm.nodes),
                    swarm.probes,
                    swarm.probing_s,
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
    database: str | None, count: int, counters: dict[str, int]
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[int], bytes, Path]]:
    """`count` registry processes (replicas when there are several) on loopback, and the
    directory that holds their state directories (`state-INDEX`). Once they stopped,
    `counters` holds the REGISTRY_COUNTERS they logged, summed (of a registry restarted
    after an outage, its second run's)."""
    with tempfile.TemporaryDirectory(prefix="pilotif-load-") as tmp:
        processes: list[subprocess.Popen[bytes]] = []
        ports: list[int] = []
        try:
            for index in range(count):
                ports.append(_free_port())
                process, key = _start_registry(Path(tmp) / f"state-{index}", ports[-1], database)
                processes.append(process)
            yield processes, ports, key, Path(tmp)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for index in range(len(processes)):
                for name, value in _stop_counters(_log_path(Path(tmp) / f"state-{index}")).items():
                    if name.startswith("urgent_wait_"):
                        counters[name] = max(counters.get(name, 0), value)
                    else:
                        counters[name] = counters.get(name, 0) + value


def _stop_counters(log: Path) -> dict[str, int]:
    """The REGISTRY_COUNTERS of the `registry_stopped` line in a registry's log, and the
    `urgent_waits` line's p50, p99 and max in microseconds (`urgent_wait_*_us`)."""
    found: dict[str, int] = {}
    for line in reversed(log.read_text().splitlines()):
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "registry_stopped":
                found |= {name: int(event.get(name, 0)) for name in REGISTRY_COUNTERS}
            if event.get("event") == "urgent_waits":
                found |= {
                    f"urgent_wait_{name}_us": round(float(event[f"{name}_ms"]) * 1000)
                    for name in ("p50", "p99", "max")
                }
    return found


def _log_path(state_dir: Path) -> Path:
    """Where the registry of `state_dir` logs (each run starts it anew)."""
    return state_dir.parent / f"{state_dir.name}.log"


def _registry_cpu(processes: list[subprocess.Popen[bytes]]) -> float:
    """CPU seconds of the registries still running, summed."""
    return sum(_cpu_seconds(process.pid) for process in processes if process.poll() is None)


def run(args: argparse.Namespace) -> Results:
    if args.replicas > 1 and not (args.database or args.postgresql):
        raise SystemExit("--replicas needs PostgreSQL (--database URL or --postgresql)")
    per_process = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (per_process + 1024,) * 2)
    results = Results(args.nodes, replicas=args.replicas, load_nice=args.load_nice)
    with (
        _database(args) as database,
        _registries(database, args.replicas, results.registry_counters) as (
            processes,
            ports,
            key,
            tmp,
        ),
    ):
        registries = [("127.0.0.1", port) for port in ports]
        workers: list[tuple[multiprocessing.Process, Connection]] = []
        for first in range(0, args.nodes, per_process):
            ours, theirs = multiprocessing.Pipe()
            count = min(per_process, args.nodes - first)
            worker = multiprocessing.Process(
                target=_worker,
                args=(theirs, first, count, registries, key, args.load_nice),
                daemon=True,
            )
            worker.start()
            workers.append((worker, ours))
        try:
            for _, conn in workers:
                conn.recv()
            started = time.monotonic()
            done_at: list[float] = []
            for _, conn in workers:
                conn.send(("register", max(1, args.window // len(workers)), args.heartbeat_s))
            for _, conn in workers:
                done_at += conn.recv()
            done_at.sort()
            _registration_rates(results, started, done_at)
            cpu_before, drops_before = _registry_cpu(processes), _udp_receive_drops()
            start = time.monotonic()
            kill_at = None if args.kill_replica_at is None else start + args.kill_replica_at
            for _, conn in workers:
                conn.send(("heartbeats", args.measure_s, kill_at))
            if kill_at is not None:
                time.sleep(max(0.0, kill_at - time.monotonic()))
                cpu_killed = _registry_cpu(processes[1:2])
                processes[1].kill()
                processes[1].wait()
                cpu_before -= cpu_killed
            for _, conn in workers:
                latencies, retried, shed, gave_up, failovers, served, told = conn.recv()
                results.heartbeat_ms += [ms for _, ms in latencies]
                results.steady_heartbeat_ms += [ms for sent, ms in latencies if sent >= done_at[-1]]
                results.requests_retried += retried
                results.shed_then_served += shed
                results.gave_up += gave_up
                results.failover_s += failovers
                results.served_after_kill_s += served
                results.nodes_told += told
            cpu_after, drops_after = _registry_cpu(processes), _udp_receive_drops()
            measured_s = time.monotonic() - start
            results.registry_cpu_percent = 100 * (cpu_after - cpu_before) / measured_s
            results.registry_rss_mib = max(_rss_mib(p.pid) for p in processes if p.poll() is None)
            results.socket_drops = drops_after - drops_before
            results.heartbeats = (
                len(results.heartbeat_ms)
                + results.requests_retried
                + results.shed_then_served
                + len(results.failover_s)
            )
            if args.registry_outage is not None:
                _outage(args, results, workers, processes, ports, tmp, database)
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


def _outage(
    args: argparse.Namespace,
    results: Results,
    workers: list[tuple[multiprocessing.Process, Connection]],
    processes: list[subprocess.Popen[bytes]],
    ports: list[int],
    tmp: Path,
    database: str | None,
) -> None:
    """Kill the registry (every replica), start it again `--registry-outage` s later on
    the same ports and state while the nodes go on; what their return measured."""
    killed_at = time.monotonic()
    restart_at = killed_at + args.registry_outage
    for _, conn in workers:
        conn.send(("outage", restart_at, args.registry_outage + args.return_s))
    for process in processes:
        process.kill()
        process.wait()
    time.sleep(max(0.0, restart_at - time.monotonic()))
    for index, port in enumerate(ports):
        processes[index], _ = _start_registry(tmp / f"state-{index}", port, database)
    results.restart_ready_s = time.monotonic() - restart_at
    cpu_before, drops_before = _registry_cpu(processes), _udp_receive_drops()
    results.outage_s = args.registry_outage
    for _, conn in workers:
        back, lost, outage_gave_up, return_gave_up, beats, busy, probes, probing_s = conn.recv()
        results.busy_notices += busy
        results.outage_probes += probes
        results.outage_probing_s += probing_s
        results.back_online_s += back
        results.not_back_online += lost
        results.outage_gave_up += outage_gave_up
        results.return_gave_up += return_gave_up
        results.return_heartbeat_ms += beats
    returned_s = time.monotonic() - restart_at
    cpu = _registry_cpu(processes)
    results.return_socket_drops = _udp_receive_drops() - drops_before
    results.return_registry_cpu_percent = 100 * (cpu - cpu_before) / returned_s


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
    parser.add_argument(
        "--registry-outage",
        type=float,
        metavar="SECONDS",
        help="after the heartbeats, kill the registry and start it again SECONDS later",
    )
    parser.add_argument(
        "--return-s", type=float, default=60.0, help="how long the return is watched"
    )
    parser.add_argument(
        "--load-nice",
        type=int,
        default=0,
        help="run the load processes at this niceness (they stand for other machines: "
        "with 10 the registry gets the CPU it asks for first)",
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
