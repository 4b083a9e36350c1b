"""The shell's UDP reading (control/shell.py) on a real loopback socket: it answers
what the core calls urgent at once and the rest from a bounded backlog, and tells the
core how long each backlog datagram waited since it arrived, which is how the registry
knows it falls behind (ControlGate.behind)."""

import asyncio
import contextlib
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotif.control import shell
from pilotif.control.counter_lease import CounterLease
from pilotif.control.gate import Outgoing
from pilotif.control.shell import serving_udp
from pilotif.wg.events import Endpoint

WAIT_S = 20.0
DATAGRAMS = 10
HELD_S = 0.2
URGENT = b"U"
"""How long the loop is kept from reading (each datagram waited at least that)."""


class RecordingCore:
    """Echoes each datagram; records the order it handled them in and how long each
    backlog datagram waited. A datagram starting with URGENT is urgent."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.heard = 0
        self.handled: list[bytes] = []
        self.waits: list[float] = []
        self.drains = 0

    @property
    def counter(self) -> int:
        return 0

    def handle_datagram(self, data: bytes, source: Endpoint, now: float) -> list[Outgoing]:
        self.heard += 1
        self.handled.append(data)
        return [(data, source)]

    def urgent(self, data: bytes) -> bool:
        return data.startswith(URGENT)

    def waited(self, delay_s: float, now: float) -> None:
        self.waits.append(delay_s)

    def drained(self, now: float) -> None:
        self.drains += 1


@contextlib.contextmanager
def _served(core: RecordingCore, tmp_path: Path) -> Iterator[tuple[Endpoint, socket.socket]]:
    """`core` served on loopback (in the running loop), and a client socket."""
    lease = CounterLease(tmp_path / "counter")
    with (
        serving_udp(core, lease, ("127.0.0.1", 0)) as (_, at),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT_S)
        yield at, client


@pytest.mark.skipif(sys.platform != "linux", reason="receive timestamps are Linux's")
def test_every_datagram_is_answered_in_batches_and_its_wait_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell, "READ_BATCH", 4)
    core = RecordingCore()

    async def test() -> None:
        with _served(core, tmp_path) as (at, client):

            async def held(count: int) -> list[float]:
                """Send `count` datagrams, keep the loop from reading for HELD_S, and
                return their waits once answered."""
                first = core.heard
                for number in range(count):
                    client.sendto(bytes((number,)), at)
                time.sleep(HELD_S)
                async with asyncio.timeout(WAIT_S):
                    while core.heard < first + count:
                        await asyncio.sleep(0.01)
                answers = sorted(client.recv(16)[0] for _ in range(count))
                assert answers == list(range(count))
                return core.waits[first:]

            # The kernel turns its timestamps on a moment after the socket asks (until
            # then it stamps a datagram when it is read): wait for that first.
            async with asyncio.timeout(WAIT_S):
                while (await held(1))[0] < HELD_S:
                    pass
            waits = await held(DATAGRAMS)
            assert len(waits) == DATAGRAMS
            assert all(HELD_S <= wait < WAIT_S for wait in waits), waits

    asyncio.run(test())
    assert len(core.waits) == core.heard
    # Each held batch was served to the end: the backlog said it drained.
    assert core.drains >= 2


def _serve_queued(tmp_path: Path, core: RecordingCore, datagrams: list[bytes]) -> None:
    """Queue `datagrams` before the loop reads any, and serve them."""

    async def test() -> None:
        with _served(core, tmp_path) as (at, client):
            for data in datagrams:
                client.sendto(data, at)
            async with asyncio.timeout(WAIT_S):
                while core.heard + core.counters["backlog_full"] < len(datagrams):
                    await asyncio.sleep(0.01)

    asyncio.run(test())


def test_an_urgent_datagram_is_served_before_the_backlog_that_came_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell, "DRAIN_S", 0.0)
    core = RecordingCore()
    crowd = [b"new-%d" % number for number in range(20)]
    _serve_queued(tmp_path, core, [*crowd, URGENT + b"heartbeat"])
    assert core.handled[0] == URGENT + b"heartbeat"
    assert core.handled[1:] == crowd


def test_past_its_bound_the_backlog_drops_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell, "MAX_BACKLOG", 5)
    core = RecordingCore()
    crowd = [b"new-%d" % number for number in range(10)]
    _serve_queued(tmp_path, core, crowd)
    assert core.handled == crowd[:5]
    assert core.counters["backlog_full"] == 5


def test_what_a_housekeeping_action_returns_is_sent_and_a_failure_does_not_stop_it() -> None:
    """The recall and the orphan notices are housekeeping actions that return datagrams:
    each run's are sent; an action that fails is run again at the next period."""
    sent: list[list[Outgoing]] = []
    runs = 0

    def action() -> list[Outgoing] | None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise RuntimeError("the database is down")
        return [(bytes((runs,)), ("198.18.0.1", 4000))] if runs % 2 else None

    async def test() -> None:
        task = asyncio.create_task(shell._every("recall", 0.001, action, sent.append))
        async with asyncio.timeout(WAIT_S):
            while runs < 5:
                await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(test())
    assert sent[:3] == [
        [(b"\x01", ("198.18.0.1", 4000))],
        [(b"\x03", ("198.18.0.1", 4000))],
        [(b"\x05", ("198.18.0.1", 4000))],
    ]


def test_the_wait_of_each_datagram_answered_as_read_is_kept(tmp_path: Path) -> None:
    """What a heartbeat waited in the socket's queue (its share of the round trip the
    load bench measures) goes into the shell's histogram; the backlog's does not."""
    core = RecordingCore()
    lease = CounterLease(tmp_path / "counter")

    async def test() -> None:
        with (
            serving_udp(core, lease, ("127.0.0.1", 0)) as (protocol, at),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        ):
            client.settimeout(WAIT_S)
            # The kernel stamps datagrams a moment after the socket asks: wait for that.
            async with asyncio.timeout(WAIT_S):
                while protocol.urgent_waits.count == 0:
                    client.sendto(URGENT + b"first", at)
                    await asyncio.sleep(0.05)
            before = protocol.urgent_waits.count
            for number in range(DATAGRAMS):
                client.sendto(URGENT + bytes((number,)), at)
                client.sendto(bytes((number,)), at)
            time.sleep(HELD_S)
            async with asyncio.timeout(WAIT_S):
                while core.heard < before + 2 * DATAGRAMS:
                    await asyncio.sleep(0.01)
            assert protocol.urgent_waits.count == before + DATAGRAMS
            assert HELD_S <= protocol.urgent_waits.quantile(0.5) < WAIT_S

    asyncio.run(test())
