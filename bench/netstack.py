"""The userspace TCP/IP stack's own figures (pilotif.netstack), in process, no root:

    python3 bench/netstack.py [--megabytes 200] [--impaired-megabytes 50]
                              [--congestion newreno|delivery_rate] [--round-trips 20000]

- cpu:      two stacks back to back with nothing between them (packets handed straight
            over): bytes/s of one bulk transfer from A to B and CPU seconds per MB
            (process time: both stacks, building, checksumming and parsing every
            segment, and the application's reads);
- impaired: the same transfer through the unit tests' simulated wire with 100 ms of
            round trip, 1% loss (--loss) both ways and a 100 MB/s rate: throughput in simulated
            time (what the algorithms reach, not the CPU), retransmissions, timeouts and
            the longest stretch without new data at the receiver (a stall), with the
            congestion controller --congestion names (the default's: NewReno);
- rr:       --round-trips of a 64-byte request and its answer over one established
            connection, the stacks handing packets straight over (the userspace node's
            config): CPU microseconds per round trip, both stacks (each sends one
            segment, receives one and reads it): the netstack's share of a small
            request's round trip through a userspace node (bench/userspace.py's rr).

The data is checked by sha256 on both. docs/NETSTACK.md keeps the figures.
"""

import argparse
import hashlib
import random
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import get_args

from pilotif.netstack import Connection, Stack, StackConfig, State
from pilotif.netstack.congestion import Congestion
from pilotif.userspace.stack import USERSPACE_CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
from netstack_wire import Link, Wire, open_pair

CHUNK_BYTES = 256 * 1024
MEGABYTE = 1_000_000
RR_MESSAGE_BYTES = 64
RR_WARMUP = 1000
RR_STEP_S = 0.0002
"""Simulated time between round trips (a LAN's)."""


def _cpu(megabytes: int) -> None:
    a = Stack([IPv4Address("100.64.0.1")], secret=b"a" * 32)
    b = Stack([IPv4Address("100.64.0.2")], secret=b"b" * 32)
    listener = b.listen(8080)
    data = random.Random(1).randbytes(megabytes * MEGABYTE)
    now = 0.0
    client = a.connect(IPv4Address("100.64.0.2"), 8080, now)
    server: Connection | None = None
    digest = hashlib.sha256()
    sent = received = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while received < len(data):
        now += 0.0001
        for packet in a.poll(now):
            b.receive(packet, now)
        for packet in b.poll(now):
            a.receive(packet, now)
        if server is None:
            server = listener.accept()
        if client.state is State.ESTABLISHED and sent < len(data):
            sent += client.send(memoryview(data)[sent : sent + CHUNK_BYTES])
        if server is not None:
            chunk = server.receive()
            digest.update(chunk)
            received += len(chunk)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert digest.digest() == hashlib.sha256(data).digest(), "data arrived corrupted"
    print(
        f"cpu:      {megabytes} MB in {wall:.2f} s: {megabytes / wall:.1f} MB/s "
        f"({8 * megabytes / wall:.0f} Mbit/s), {1000 * cpu / megabytes:.1f} ms CPU per MB"
    )


def _impaired(megabytes: int, loss: float, congestion: Congestion) -> None:
    link = Link(delay_s=0.05, loss=loss, rate_bytes_per_s=100e6)
    config = StackConfig(
        receive_buffer_bytes=8 * 1024 * 1024,
        send_buffer_bytes=8 * 1024 * 1024,
        congestion=congestion,
    )
    wire = Wire(link=link, config_a=config, config_b=config, seed=3)
    client, server = open_pair(wire)
    data = random.Random(2).randbytes(megabytes * MEGABYTE)
    digest = hashlib.sha256()
    state = {"sent": 0, "received": 0, "last": wire.now, "stall": 0.0}
    start = wire.now

    def app() -> None:
        if state["sent"] < len(data):
            state["sent"] += client.send(memoryview(data)[int(state["sent"]) :][:CHUNK_BYTES])
        chunk = server.receive()
        if chunk:
            digest.update(chunk)
            state["received"] += len(chunk)
            state["stall"] = max(state["stall"], wire.now - state["last"])
            state["last"] = wire.now

    wire.run(lambda: state["received"] >= len(data), limit_s=3600, app=app)
    elapsed = wire.now - start
    assert digest.digest() == hashlib.sha256(data).digest(), "data arrived corrupted"
    rate = megabytes / elapsed
    print(
        f"impaired: {megabytes} MB over 100 ms RTT, {loss:.1%} loss, {congestion}: {rate:.2f} MB/s "
        f"simulated, {client.retransmissions} retransmissions, {client.timeouts} timeouts, "
        f"longest stall {state['stall']:.2f} s"
    )


def _rr(round_trips: int) -> None:
    a = Stack([IPv4Address("100.64.0.1")], USERSPACE_CONFIG, secret=b"a" * 32)
    b = Stack([IPv4Address("100.64.0.2")], USERSPACE_CONFIG, secret=b"b" * 32)
    listener = b.listen(8080)
    now = 0.0
    client = a.connect(IPv4Address("100.64.0.2"), 8080, now)
    accepted: Connection | None = None
    while accepted is None or client.state is not State.ESTABLISHED:
        now += RR_STEP_S
        for packet in a.poll(now):
            b.receive(packet, now, authenticated=True)
        for packet in b.poll(now):
            a.receive(packet, now, authenticated=True)
        accepted = accepted or listener.accept()
    server = accepted
    request = bytes(RR_MESSAGE_BYTES)

    def run(count: int) -> None:
        nonlocal now
        for _ in range(count):
            now += RR_STEP_S
            client.send(request)
            for packet in a.poll(now):
                b.receive(packet, now, authenticated=True)
            server.send(server.receive())
            for packet in b.poll(now):
                a.receive(packet, now, authenticated=True)
            if len(client.receive()) != RR_MESSAGE_BYTES:
                raise AssertionError("the answer did not arrive whole")
            a.take_events()
            b.take_events()

    run(RR_WARMUP)
    cpu = time.process_time()
    run(round_trips)
    cpu = time.process_time() - cpu
    print(f"rr:       {round_trips} round trips, {1e6 * cpu / round_trips:.1f} us CPU each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--impaired-megabytes", type=int, default=50)
    parser.add_argument("--loss", type=float, default=0.01, help="share lost each way")
    parser.add_argument("--congestion", choices=get_args(Congestion), default="newreno")
    parser.add_argument("--round-trips", type=int, default=20000)
    args = parser.parse_args()
    if args.megabytes:
        _cpu(args.megabytes)
    if args.impaired_megabytes:
        _impaired(args.impaired_megabytes, args.loss, args.congestion)
    if args.round_trips:
        _rr(args.round_trips)


if __name__ == "__main__":
    main()
