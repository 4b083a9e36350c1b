"""Issue 5, item 5, end to end: `--metrics` shows the counters moving while traffic flows,
`pilotif events --json` prints peer and path events as they happen, and `up --webhook`
POSTs them to a URL (which first fails, so the retry is exercised).

The static test runs `pilotif up --config ... --metrics ... --webhook ...` in lab namespace A
against a plain pilotif on B, and scrapes with curl from inside A; the registry test uses the
NAT lab (two cone NATs) for a path change to direct; the registry's own metrics are scraped
on loopback. Everything a test starts is stopped by PID and its namespaces are removed.
"""

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pilotif_lab import LabHost, PilotifNode, ping, tcp_transfer, tunnel_configs
from pilotif_lab.nat import PATH_TIMEOUT_S, REGISTRY, NatKind, NatLab, nat_lab, poll_until
from pilotif_lab.netns import Namespace, pid_alive, stop_process
from pilotif_lab.pilotif_node import pilotif_executable
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

METRICS_PORT = 9469
HOOK_PORT = 8089
TRANSFER_BYTES = 2 * 2**20
EVENT_TIMEOUT_S = 15.0
STEP_TIMEOUT_S = 20.0

# Answers the first POST with 500, then 204; appends every accepted body to a file.
_HOOK_SERVER = textwrap.dedent(
    """
    import http.server, sys
    out, failures = sys.argv[1], [1]
    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if failures:
                failures.pop()
                self.send_response(500)
            else:
                with open(out, "ab") as f:
                    f.write(body + b"\\n")
                self.send_response(204)
            self.end_headers()
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Hook).serve_forever()
    """
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(namespace: Namespace | None, url: str) -> Samples:
    """`curl URL` (inside `namespace` when given), parsed."""
    command = ["curl", "-sf", "--max-time", "5", url]
    if namespace is not None:
        text = namespace.run(*command).stdout
    else:
        text = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class EventReader:
    """`pilotif events --json` running in a namespace; `wait_for` reads its lines."""

    def __init__(self, namespace: Namespace, state_dir: Path) -> None:
        self._namespace = namespace
        self.process = namespace.spawn(
            pilotif_executable(), "events", "--json", "--state-dir", str(state_dir), pipes=True
        )
        self.seen: list[dict[str, Any]] = []
        self._buffer = b""
        assert self.process.stderr is not None
        ready, _, _ = select.select([self.process.stderr], [], [], STEP_TIMEOUT_S)
        assert ready, "`pilotif events` did not start listening"
        assert b"listening" in self.process.stderr.readline()

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = EVENT_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first event (seen or to come) that matches; fails after `timeout_s`."""
        # Events come in order: an earlier wait may have read past the one wanted here.
        for event in self.seen:
            if match(event):
                return event
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            fresh: list[dict[str, Any]] = [json.loads(line) for line in lines]
            self.seen += fresh
            for event in fresh:
                if match(event):
                    return event
        pytest.fail(f"no {what} event in {timeout_s} s; saw {self.seen}")

    def stop(self) -> None:
        self._namespace.stop(self.process)


def _up_with_observability(host: LabHost, node: PilotifNode, extra: list[str]) -> None:
    node.state_dir.mkdir(parents=True, exist_ok=True)
    node.config_path.touch(mode=0o600)
    node.config_path.write_text(node.config.to_wg_quick())
    host.namespace.run(
        pilotif_executable(),
        "up",
        "--config",
        str(node.config_path),
        "--interface",
        node.interface,
        *extra,
        "--state-dir",
        str(node.state_dir),
        timeout_s=STEP_TIMEOUT_S,
    )


def test_static_node_metrics_move_with_traffic_and_events_reach_cli_and_webhook(
    hosts: tuple[LabHost, LabHost], tmp_path: Path
) -> None:
    a, b = hosts
    config_a, config_b = tunnel_configs(a, b, preshared_key=False)
    node_a = PilotifNode(a.namespace, a.new_interface_name(), config_a, a.workdir)
    node_b = PilotifNode(b.namespace, b.new_interface_name(), config_b, b.workdir)
    hook_file = tmp_path / "webhook.jsonl"
    a.namespace.spawn(sys.executable, "-c", _HOOK_SERVER, str(hook_file), str(HOOK_PORT))
    metrics_url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    try:
        node_b.start()
        _up_with_observability(
            a,
            node_a,
            [
                "--metrics",
                f"127.0.0.1:{METRICS_PORT}",
                "--webhook",
                f"http://127.0.0.1:{HOOK_PORT}/",
            ],
        )
        events = EventReader(a.namespace, node_a.state_dir)
        before = _scrape(a.namespace, metrics_url)
        peer_b = config_a.peers[0].public_key
        assert before[("pilotif_peers", (("path", "none"),))] == 1
        assert before[("pilotif_handshakes_total", ())] == 0
        assert before[("pilotif_tx_bytes_total", (("peer", peer_b),))] == 0

        assert ping(a.namespace, b.addresses.overlay_v4).all_answered
        up = events.wait_for(lambda e: e["event"] == "peer_up", "peer_up")
        assert up["public_key"] == peer_b
        assert isinstance(up["time"], float)

        transfer = tcp_transfer(a.namespace, b.namespace, b.addresses.overlay_v4, TRANSFER_BYTES)
        assert transfer.intact
        after = _scrape(a.namespace, metrics_url)
        assert after[("pilotif_peers", (("path", "direct"),))] == 1
        assert after[("pilotif_handshakes_total", ())] >= 1
        assert after[("pilotif_tx_bytes_total", (("peer", peer_b),))] >= TRANSFER_BYTES
        assert after[("pilotif_rx_bytes_total", (("peer", peer_b),))] > 0
        assert after[("pilotif_drops_total", (("reason", "decrypt_failed"),))] == 0

        def hooked() -> list[dict[str, Any]] | None:
            if not hook_file.exists():
                return None
            posted = [json.loads(line) for line in hook_file.read_text().splitlines()]
            return posted or None

        posted = poll_until(hooked, EVENT_TIMEOUT_S, "a webhook POST")
        assert posted[0]["event"] == "peer_up"
        assert posted[0]["public_key"] == peer_b
        events.stop()
    finally:
        node_a.stop()
        node_b.stop()


def _events_of(lab: NatLab, hostname: str) -> EventReader:
    agent = lab[hostname]
    return EventReader(agent.namespace, agent.state_dir)


def test_registry_node_reports_trust_peer_up_and_path_change_to_direct(tmp_path: Path) -> None:
    cone = NatKind.CONE
    with nat_lab((cone, cone), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        metrics = f"127.0.0.1:{METRICS_PORT}"
        alpha.pilotif("up", "--registry", REGISTRY, "--hostname", "alpha", "--metrics", metrics)
        beta.up()
        events = _events_of(lab, "alpha")
        alpha.pilotif("handshake", "beta")
        poll_until(
            lambda: True if beta.json("pending").get("incoming") else None,
            PATH_TIMEOUT_S,
            "alpha's request at beta",
        )
        beta.pilotif("approve", "alpha")
        approved = events.wait_for(lambda e: e["event"] == "trust_approved", "trust_approved")
        assert approved["peer"] == "beta"
        up = events.wait_for(lambda e: e["event"] == "peer_up", "peer_up")
        assert up["peer"] == "beta"
        direct = events.wait_for(
            lambda e: e["event"] == "path_changed" and e["path"] == "direct", "path_changed"
        )
        assert direct["peer"] == "beta"
        assert direct["endpoint"] == alpha.peer("beta")["endpoint"]  # type: ignore[index]
        samples = _scrape(alpha.namespace, f"http://{metrics}/metrics")
        assert samples[("pilotif_peers", (("path", "direct"),))] == 1
        assert samples[("pilotif_registry_online", ())] == 1
        # The first handshake went through the registry's relay, before the punch.
        assert samples[("pilotif_relay_tx_bytes_total", ())] > 0
        assert samples[("pilotif_handshakes_total", ())] >= 1
        beta.pilotif("untrust", "alpha")
        revoked = events.wait_for(lambda e: e["event"] == "trust_revoked", "trust_revoked")
        assert revoked["peer"] == "beta"
        down = events.wait_for(lambda e: e["event"] == "peer_down", "peer_down")
        assert down["peer"] == "beta"
        events.stop()


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_registry_serves_its_metrics(tmp_path: Path) -> None:
    listen, metrics = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    registry = subprocess.Popen(
        [
            pilotif_executable(),
            "registry",
            "--listen",
            f"127.0.0.1:{listen}",
            "--metrics",
            f"127.0.0.1:{metrics}",
            "--state-dir",
            str(tmp_path / "registry"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{metrics}/metrics"

        def scraped() -> Samples | None:
            try:
                return _scrape(None, url)
            except subprocess.CalledProcessError:
                return None

        samples = poll_until(scraped, STEP_TIMEOUT_S, "the registry's metrics")
        assert samples[("pilotif_registry_nodes_online", ())] == 0
        assert samples[("pilotif_registry_relayed_bytes_total", ())] == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\xff garbage", ("127.0.0.1", listen))
        dropped = poll_until(
            lambda: _scrape(None, url).get(
                ("pilotif_registry_dropped_total", (("reason", "unknown_type"),))
            ),
            STEP_TIMEOUT_S,
            "the dropped datagram counted",
        )
        assert dropped == 1
    finally:
        stop_process(registry)
        assert not pid_alive(registry.pid)
