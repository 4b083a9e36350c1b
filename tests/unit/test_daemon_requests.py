"""The daemon's control API without root: the request table answers status, peers and
down, and refuses what it cannot do with a code, for an interface built from a real
WireGuard core and a fake Bind (and, for a node, a node runner wired to a registry core
in memory)."""

import asyncio
from ipaddress import IPv4Network, ip_interface
from pathlib import Path
from typing import Any

import pytest

from pilotif.daemon.api import Reply
from pilotif.daemon.parts import Parts
from pilotif.daemon.requests import ControlRequests
from pilotif.observe import EventBus
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.device import Device
from pilotif.wg.keys import encode_key
from tests.unit.fake_bind import FAKE_PORT, FakeBind
from tests.unit.test_node_adapter import Wiring

PEER_KEY = public_key(generate_private_key())
PEER_ENDPOINT = ("198.18.0.2", 51820)
MTU = 1420


class Interface:
    """A static interface's parts, its request table, and what the table asked of it."""

    def __init__(self) -> None:
        device = Device(generate_private_key(), mtu=MTU, wall_offset_s=0.0)
        device.add_peer(
            PEER_KEY, allowed_ips=[IPv4Network("10.0.0.2/32")], endpoint=PEER_ENDPOINT, now=0.0
        )
        self.parts = Parts("pilotif0", device, MTU, [ip_interface("10.0.0.1/24")], FakeBind())
        self.stopped = False
        self.flushes = 0
        self.requests = ControlRequests(
            self.parts,
            EventBus(),
            stop=self._stop,
            flush=self._flush,
            services=lambda: None,
            now=lambda: 0.0,
        )

    def _stop(self) -> None:
        self.stopped = True

    def _flush(self, now: float) -> None:
        self.flushes += 1

    def ask(self, **request: Any) -> Reply:
        return asyncio.run(self.requests.handle(request))


@pytest.fixture
def interface() -> Interface:
    return Interface()


def test_status_shows_the_interface_its_peers_and_the_binds_port(interface: Interface) -> None:
    reply = interface.ask(command="status")
    assert reply["ok"] is True
    status = reply["status"]
    assert status["interface"] == "pilotif0"
    assert status["listen_port"] == FAKE_PORT
    assert status["addresses"] == ["10.0.0.1/24"]
    assert status["mtu"] == MTU
    assert status["node"] is None
    assert status["offloads"]["udp"] == {"fake": True}
    [peer] = status["peers"]
    assert peer["public_key"] == encode_key(PEER_KEY)
    assert peer["endpoint"] == "198.18.0.2:51820"
    assert peer["allowed_ips"] == ["10.0.0.2/32"]
    assert peer["latest_handshake"] is None


def test_down_stops_the_daemon(interface: Interface) -> None:
    assert interface.ask(command="down") == {"ok": True}
    assert interface.stopped


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"command": "no such thing"}, "bad_command"),
        ({}, "bad_command"),
        ({"command": ["status"]}, "bad_command"),
        ({"command": "peers"}, "no_registry"),
        ({"command": "handshake", "peer": "beta"}, "no_registry"),
        ({"command": "send", "peer": "beta", "text": "hi"}, "no_services"),
    ],
)
def test_a_request_it_cannot_answer_is_refused_with_its_code(
    interface: Interface, request_: dict[str, Any], code: str
) -> None:
    reply = interface.ask(**request_)
    assert reply["ok"] is False
    assert reply["code"] == code
    assert reply["error"]


def test_a_node_answers_peers_and_its_commands_flush_the_data_path(tmp_path: Path) -> None:
    interface = Interface()
    wiring = Wiring(tmp_path)
    interface.parts.node = wiring.runner

    async def scenario() -> tuple[Reply, Reply, Reply]:
        await wiring.runner.join()
        await wiring.runner.synced()
        peers = await interface.requests.handle({"command": "peers"})
        found = await interface.requests.handle({"command": "find", "query": "alpha"})
        status = await interface.requests.handle({"command": "status"})
        return peers, found, status

    try:
        peers, found, status = asyncio.run(scenario())
    finally:
        wiring.runner.close()
        wiring.store.close()
    assert peers == {"ok": True, "peers": []}
    assert [node["hostname"] for node in found["nodes"]] == ["alpha"]
    assert interface.flushes == 2
    node = status["status"]["node"]
    assert node["hostname"] == "alpha"
    assert node["registry_unreachable_since"] is None
