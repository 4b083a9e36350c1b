"""Issue 13's standalone relays in the namespace lab: two `pilotif relay` processes on the
public switch, named by the registry (`--relay KEY@IP:PORT`). Two agents behind
symmetric NATs (no direct path) talk through their nearest relays, never through the
registry; a node that nobody trusts is refused by the relay; the relay one of them sends
through is killed and it moves to the other within seconds."""

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pilotif_lab.checks import ping
from pilotif_lab.nat import (
    RELAY_PORT,
    Agent,
    NatKind,
    NatLab,
    nat_lab,
    poll_until,
    relay_log,
    relay_spec,
    trust,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

RELAYS = ("198.18.0.3", "198.18.0.4")
INTRUDER = Path(__file__).with_name("relay_intruder.py")
INTRUDER_DATAGRAMS = 20
RELAY_TIMEOUT_S = 15.0
"""From trust to a relayed path (tickets fetched, handshake through the relay)."""
REPLACED_WITHIN_S = 10.0
"""Issue 13: a relay that dies is replaced within seconds (the node checks its home relay
every 2 s while it relays; generous for slow CI machines)."""
PINGS_ACROSS_THE_KILL = 100
PING_INTERVAL_S = 0.1


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[NatLab, list[str]]]:
    specs = [relay_spec(tmp_path, address) for address in RELAYS]
    registry_args = [arg for spec in specs for arg in ("--relay", spec)]
    with nat_lab(
        (NatKind.SYMMETRIC, NatKind.SYMMETRIC),
        (("alpha", 0), ("beta", 1)),
        tmp_path,
        internet_hosts=("mallory",),
        registry_args=registry_args,
    ) as built:
        for address in RELAYS:
            built.start_relay(address)
        yield built, specs


def _home(agent: Agent) -> str | None:
    homes = [r["endpoint"] for r in agent.status()["node"]["relays"] if r["home"]]
    return homes[0] if homes else None


def _relayed_pair(lab: NatLab) -> tuple[Agent, Agent]:
    alpha, beta = lab["alpha"], lab["beta"]
    alpha.up()
    beta.up()
    poll_until(lambda: _home(alpha) and _home(beta), RELAY_TIMEOUT_S, "a home relay each")
    trust(alpha, beta)
    alpha.wait_for_path("beta", ("relay",), RELAY_TIMEOUT_S)
    return alpha, beta


def _stopped_counters(lab: NatLab, address: str) -> dict[str, Any]:
    """Stop the relay (SIGTERM) and return the counters it logged."""
    lab.stop_relay(address)
    lines = relay_log(lab.workdir, address).read_text().splitlines()
    stopped = [json.loads(line) for line in lines if '"relay_stopped"' in line]
    assert len(stopped) == 1, lines[-5:]
    counters: dict[str, Any] = stopped[0]
    return counters


def test_a_standalone_relay_carries_a_symmetric_pair_and_refuses_a_stranger(
    lab: tuple[NatLab, list[str]],
) -> None:
    nat, specs = lab
    alpha, beta = _relayed_pair(nat)
    home = _home(alpha)
    assert home in {f"{address}:{RELAY_PORT}" for address in RELAYS}
    beta_ip = str(beta.status()["node"]["ipv4"])
    assert ping(alpha.namespace, beta_ip, 10).all_answered
    assert ping(beta.namespace, str(alpha.status()["node"]["ipv4"]), 10).all_answered
    assert alpha.peer("beta")["path"] == "relay"  # type: ignore[index]

    # A node nobody trusts attaches to the relay beta sends through, with a ticket
    # it made itself, and sends datagrams to beta: the relay takes none of them.
    beta_home = _home(beta)
    spec = next(s for s in specs if s.endswith("@" + str(beta_home)))
    relay_key, _, relay_at = spec.partition("@")
    intruder = nat.internet["mallory"].namespace.run(
        sys.executable,
        str(INTRUDER),
        "--relay",
        relay_at,
        "--relay-key",
        relay_key,
        "--victim",
        beta.status()["public_key"],
        "--count",
        str(INTRUDER_DATAGRAMS),
        timeout_s=60,
    )
    outcome = json.loads(intruder.stdout)
    assert outcome == {
        "attached": True,
        "tickets_accepted": 0,
        "sent": INTRUDER_DATAGRAMS,
        "came_back": 0,
    }
    assert ping(alpha.namespace, beta_ip, 3).all_answered

    counters = {address: _stopped_counters(nat, address) for address in RELAYS}
    through = counters[str(beta_home).partition(":")[0]]
    assert through["relay_not_trusted"] >= INTRUDER_DATAGRAMS
    assert through["bad_ticket"] >= 1
    assert sum(c.get("relayed_packets", 0) for c in counters.values()) >= 20
    # The registry relayed nothing: every relayed datagram went through the relays.
    nat.stop_registry()
    stopped = [
        line for line in nat.registry_log.read_text().splitlines() if "registry_stopped" in line
    ]
    assert stopped and "relayed_packets" not in stopped[-1], stopped


def test_a_dead_relay_is_replaced_within_seconds(lab: tuple[NatLab, list[str]]) -> None:
    nat, _ = lab
    alpha, beta = _relayed_pair(nat)
    home = _home(alpha)
    assert home is not None
    beta_ip = str(beta.status()["node"]["ipv4"])
    assert ping(alpha.namespace, beta_ip, 3).all_answered
    pings = alpha.namespace.spawn(
        "ping",
        "-n",
        "-D",
        "-c",
        str(PINGS_ACROSS_THE_KILL),
        "-i",
        str(PING_INTERVAL_S),
        beta_ip,
        pipes=True,
    )
    time.sleep(1.0)
    nat.stop_relay(home.partition(":")[0], crash=True)
    killed_at = time.time()
    poll_until(
        lambda: _home(alpha) not in (None, home) and _home(beta) not in (None, home),
        REPLACED_WITHIN_S,
        "both agents on the relay that is left",
    )
    output, _ = pings.communicate(timeout=60)
    answered = [float(t) for t in re.findall(rb"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]
    after = [t for t in answered if t > killed_at]
    assert after, output[-500:]
    gap_s = after[0] - max((t for t in answered if t <= killed_at), default=killed_at)
    print(f"relay killed: pings resumed after {gap_s:.2f} s")
    assert gap_s < REPLACED_WITHIN_S
    assert alpha.peer("beta")["path"] == "relay"  # type: ignore[index]
    assert ping(beta.namespace, str(alpha.status()["node"]["ipv4"]), 3).all_answered
