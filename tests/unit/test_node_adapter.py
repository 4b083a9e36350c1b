"""The node's asyncio adapter (NodeRunner) on a real event loop, wired to a registry core
in memory as the daemon wires it to a socket: futures resolved from the core's events,
the counter lease kept, and the timer re-armed whenever the daemon's flush drains output
that an input outside the runner (the device's roam filter) made. No sockets, no root."""

import asyncio
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from pilotif.control.counter_lease import CounterLease
from pilotif.daemon.node_runner import JOIN_GRACE_S, NodeRunner, RegistryError
from pilotif.node.cache import NodeCache
from pilotif.node.core import NodeCore
from pilotif.node.events import NodeEvent
from pilotif.node.path_manager import Opener
from pilotif.node.policy_files import PolicyFiles
from pilotif.node.registration import NodeOptions
from pilotif.node.registry_link import REQUEST_RETRY_S
from pilotif.node.trust import TrustFiles
from pilotif.registry.core import RegistryCore
from pilotif.registry.store import Store
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint

REGISTRY: Endpoint = ("198.18.0.1", 7946)
NODE: Endpoint = ("198.18.0.11", 40000)


class Wiring:
    """A NodeRunner whose datagrams reach a registry core (unless `drop_next` says
    otherwise) and whose answers come back on the loop, as the daemon's socket does."""

    def __init__(self, tmp: Path, restart_of: "Wiring | None" = None) -> None:
        """A node named alpha; `restart_of`: the same node (key, state dir, registry)
        started again."""
        self.tmp = tmp
        if restart_of is None:
            self.store = Store(tmp / "registry.db", IPv4Network("100.64.0.0/10"))
            self.registry = RegistryCore(generate_private_key(), self.store, first_counter=1)
            private_key = generate_private_key()
        else:
            self.store, self.registry = restart_of.store, restart_of.registry
            private_key = restart_of.runner.core.device.local.private_key
        self.sent = 0
        self.openers: list[Opener] = []
        self.drop_next = 0
        self.registry_down = False
        self.events: list[NodeEvent] = []
        state = tmp / "alpha"
        state.mkdir(exist_ok=True)
        files = TrustFiles(state)
        self.lease = CounterLease(state / "control.counter")
        device = Device(private_key, mtu=1420, wall_offset_s=0.0)
        options = NodeOptions(REGISTRY, "alpha", [], None, None)
        core = NodeCore(
            options,
            device,
            files.load(),
            registry=REGISTRY,
            lan_endpoints=[],
            first_counter=self.lease.first,
        )
        self.cache = NodeCache(state)
        self.runner = NodeRunner(
            core,
            files,
            self.lease,
            self.cache,
            PolicyFiles(tmp, None),
            listen_port=NODE[1],
            send=self._send,
            send_openers=self.openers.extend,
            flush=self._flush,
            on_event=self.events.append,
        )

    def _flush(self, now: float) -> None:
        # The daemon's flush: drain the core whenever it has output.
        if self.runner.core.has_output:
            self.runner.drain()

    def _send(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        loop = asyncio.get_running_loop()
        for datagram, _ in datagrams:
            self.sent += 1
            if self.drop_next or self.registry_down:
                self.drop_next = max(0, self.drop_next - 1)
                continue
            for answer, _ in self.registry.handle_datagram(datagram, NODE, time.time()):
                loop.call_soon(self._receive, answer)

    def _receive(self, answer: bytes) -> None:
        now = time.monotonic()
        self.runner.receive_control(answer, now)
        self.runner.after_input(now)


@pytest.fixture
def wiring(tmp_path: Path) -> Iterator[Wiring]:
    built = Wiring(tmp_path)
    yield built
    built.runner.close()
    built.store.close()


def test_join_and_commands_resolve_from_the_cores_events(wiring: Wiring) -> None:
    async def scenario() -> dict[str, Any]:
        await wiring.runner.join()
        await wiring.runner.synced()
        return await wiring.runner.command({"command": "find", "query": "alpha"})

    found = asyncio.run(scenario())
    assert [node["hostname"] for node in found["nodes"]] == ["alpha"]
    # The pinned registry key and the counter lease are on disk.
    assert (wiring.tmp / "alpha" / "registry.pub").exists()
    assert int((wiring.tmp / "alpha" / "control.counter").read_text()) > (
        wiring.runner.core.link.counter
    )


def test_a_refusal_is_a_registry_error_with_its_code(wiring: Wiring) -> None:
    async def scenario() -> None:
        await wiring.runner.join()
        await wiring.runner.call("trust_request", peer="not a key")

    with pytest.raises(RegistryError) as refused:
        asyncio.run(scenario())
    assert refused.value.code == "bad_request"


def test_output_made_outside_the_runner_is_sent_and_its_retry_timer_armed(
    wiring: Wiring,
) -> None:
    """The device's roam filter changes the core during data input, outside any runner
    method; the daemon's flush then drains. What that made must go out at once and its
    timer be armed then (before, it waited for the core's next timer): here a request
    whose first datagram is lost goes out again REQUEST_RETRY_S later."""

    async def scenario() -> tuple[int, int]:
        await wiring.runner.join()
        await wiring.runner.synced()
        wiring.drop_next = 1
        before = wiring.sent
        now = time.monotonic()
        wiring.runner.core.call("lookup", {"query": "alpha"}, now)
        wiring._flush(now)
        at_once = wiring.sent - before
        await asyncio.sleep(REQUEST_RETRY_S * 1.5)
        return at_once, wiring.sent - before

    assert asyncio.run(scenario()) == (1, 2)


def test_a_node_that_ran_before_starts_without_its_registry_and_joins_later(
    wiring: Wiring,
) -> None:
    """Issue 10: `up` while the registry was down failed after 10.6 s, though the node
    had run before. With what it kept it starts after JOIN_GRACE_S and keeps trying."""
    asyncio.run(wiring.runner.join())
    snapshot = wiring.runner.core.snapshot(NODE[1])
    assert snapshot is not None
    assert wiring.cache.load() == snapshot, "the cache was written when the node joined"

    wiring.runner.close()
    restarted = Wiring(wiring.tmp, restart_of=wiring)
    restarted.registry_down = True

    async def scenario() -> tuple[float, bool]:
        started = time.monotonic()
        await restarted.runner.join(snapshot)
        took = time.monotonic() - started
        core = restarted.runner.core
        assert core.ipv4 == snapshot.ipv4 and not core.registry_online
        restarted.registry_down = False
        await asyncio.sleep(REQUEST_RETRY_S * 3)
        return took, core.registry_online

    took, online_later = asyncio.run(scenario())
    restarted.runner.close()
    assert JOIN_GRACE_S <= took < JOIN_GRACE_S + 1.0
    assert online_later


def test_without_a_snapshot_an_unreachable_registry_fails_up(wiring: Wiring) -> None:
    wiring.registry_down = True

    async def scenario() -> None:
        await wiring.runner.join(None)

    with pytest.raises(RegistryError) as failed:
        asyncio.run(scenario())
    assert failed.value.code == "unreachable"
    assert "keeps trying" not in str(failed.value)
