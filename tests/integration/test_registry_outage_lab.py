"""Issue 26 items 3 and 4 in the namespace lab: nodes notice their registry's return
within about a second whatever the outage's length, and relayed peers keep their path
through standalone relays while the registry is away, also across a node's restart.

The registry's return is the time of its `registry_started` log line (logged before it
binds its sockets, so the measure is on the safe side); a node's return is its
`registry_regained` log line. Both are on this machine's clock, in milliseconds.
"""

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from pilotif_lab.checks import tcp_transfer
from pilotif_lab.nat import (
    Agent,
    NatKind,
    NatLab,
    nat_lab,
    poll_until,
    relay_spec,
    trust,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

OUTAGE_S = float(os.environ.get("PILOTIF_LAB_OUTAGE_S", "30"))
"""The outage the return is measured after (120 by hand: PILOTIF_LAB_OUTAGE_S=120)."""
BACK_WITHIN_S = 1.5
"""Issue 26's target: both nodes online this soon after the registry's return."""
SLOW_MACHINE_FACTOR = 2.0
"""The suite must pass on a machine twice as slow: the bound asserted is the target times
this (the figure measured is printed)."""
NOTICE_TIMEOUT_S = 30.0
"""Nodes take the registry for lost after a registration's attempts (5 s); generous."""
RELAY = "198.18.0.3"
RELAY_TIMEOUT_S = 30.0
"""From trust, or from a restart, to a relayed path (attach, tickets, handshake);
generous for a slow machine."""
TRANSFER_BYTES = 2_000_000


def _log_times(path: Path, event: str) -> list[float]:
    """The Unix times of `event` lines in a text or JSON log."""
    times = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if fields.get("event") != event:
                continue
            stamp = str(fields["time"])
        elif f" {event}" in line:
            stamp = line.split(" ", 1)[0]
        else:
            continue
        times.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return times


def _online(agent: Agent) -> bool:
    return bool(agent.status()["node"]["registry_online"])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[NatLab]:
    """alpha and beta behind cone NATs, up (no trust needed: each has its registration)."""
    with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        lab["alpha"].up()
        lab["beta"].up()
        yield lab


@pytest.mark.alone
def test_nodes_are_back_within_a_second_of_the_registrys_return(pair: NatLab) -> None:
    both = (pair["alpha"], pair["beta"])
    pair.stop_registry()
    stopped = time.monotonic()
    poll_until(
        lambda: True if not any(_online(agent) for agent in both) else None,
        NOTICE_TIMEOUT_S,
        "alpha and beta noticing the registry is gone",
    )
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    pair.start_registry()
    poll_until(
        lambda: True if all(_online(agent) for agent in both) else None,
        BACK_WITHIN_S * SLOW_MACHINE_FACTOR * 4,
        "alpha and beta registered again",
        interval_s=0.1,
    )
    returned = _log_times(pair.registry_log, "registry_started")[-1]
    back = {a.hostname: _log_times(a.log_path, "registry_regained")[-1] - returned for a in both}
    print(f"after a {OUTAGE_S:.0f} s outage, back online after (s): {back}")
    assert max(back.values()) < BACK_WITHIN_S * SLOW_MACHINE_FACTOR, back


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[NatLab]:
    """alpha and beta behind symmetric NATs (no direct path) trusting each other, relayed
    by a standalone relay that the registry names."""
    with nat_lab(
        (NatKind.SYMMETRIC, NatKind.SYMMETRIC),
        (("alpha", 0), ("beta", 1)),
        tmp_path,
        registry_args=("--relay", relay_spec(tmp_path, RELAY)),
    ) as lab:
        lab.start_relay(RELAY)
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        alpha.wait_for_path("beta", ("relay",), RELAY_TIMEOUT_S)
        beta.wait_for_path("alpha", ("relay",), RELAY_TIMEOUT_S)
        yield lab


def _relayed_both_ways(alpha: Agent, beta: Agent) -> None:
    """A TCP transfer each way over the overlay, content checked, through the relay."""
    for sender, receiver in ((alpha, beta), (beta, alpha)):
        address = str(receiver.status()["node"]["ipv4"])
        sent = tcp_transfer(sender.namespace, receiver.namespace, address, TRANSFER_BYTES)
        assert sent.intact, (sender.hostname, sent)
        assert sender.peer(receiver.hostname)["path"] == "relay"  # type: ignore[index]


def test_relayed_peers_survive_an_outage_and_a_restart(relayed: NatLab) -> None:
    alpha, beta = relayed["alpha"], relayed["beta"]
    _relayed_both_ways(alpha, beta)
    relayed.stop_registry(keep_relays=True)
    poll_until(
        lambda: True if not any(_online(agent) for agent in (alpha, beta)) else None,
        NOTICE_TIMEOUT_S,
        "alpha and beta noticing the registry is gone",
    )
    # beta stays up and keeps its relayed peer; alpha restarts from what it kept.
    _relayed_both_ways(alpha, beta)
    alpha.down()
    alpha.restart()
    assert not _online(alpha)
    started = [
        line
        for line in alpha.log_path.read_text().splitlines()
        if " started_without_registry" in line
    ]
    assert started and "relays=1" in started[-1] and "tickets=1" in started[-1], started
    alpha.wait_for_path("beta", ("relay",), RELAY_TIMEOUT_S)
    _relayed_both_ways(alpha, beta)
    # The registry comes back: both register, and the relayed path goes on.
    relayed.start_registry()
    poll_until(
        lambda: True if all(_online(agent) for agent in (alpha, beta)) else None,
        BACK_WITHIN_S * SLOW_MACHINE_FACTOR * 4,
        "alpha and beta registered again",
        interval_s=0.1,
    )
    _relayed_both_ways(alpha, beta)
    assert [n["hostname"] for n in alpha.json("find", "beta")] == ["beta"]
