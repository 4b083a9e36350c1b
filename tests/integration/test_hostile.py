"""A pilotif daemon under hostile input keeps carrying traffic, counts what it dropped, and
does not log per packet.

While 10 MiB of TCP cross the tunnel from a wireguard-go peer, the sprayer (hostile.py),
running in the peer's namespace from other source ports, sends the daemon's UDP port random
bytes, truncated and oversize messages, handshakes with a bad mac1, and replays of real
transport messages and initiations captured on the underlay.
"""

import json
import os
import sys
from pathlib import Path

import pytest
from pilotif_lab import LabHost, NodeKind, PilotifNode, ping, start_transfer, tcp_transfer, tunnel
from pilotif_lab.capture import capture_udp, read_udp
from pilotif_lab.topology import LISTEN_PORT, UNDERLAY_INTERFACE

from pilotif.wg.constants import MESSAGE_INITIATION, MESSAGE_TRANSPORT
from pilotif.wg.drops import DropReason

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

TRANSFER_BYTES = 10 * 2**20
TRANSFER_MIN_SECONDS = 6.0
"""Long enough for the whole spray to land while the transfer runs."""
WARMUP_BYTES = 2**20
CAPTURE_PACKETS = 200
SPRAY_MAX_PACKETS = 2000
SPRAY_MAX_SECONDS = 4.0
SPRAY_TIMEOUT_S = 30.0
MAX_NEW_LOG_LINES = 10
SPRAYER = Path(__file__).with_name("hostile.py")
PROVOKED_DROPS = (
    DropReason.MALFORMED,
    DropReason.BAD_MAC1,
    DropReason.REPLAY,
    DropReason.REPLAYED_INITIATION,
)


def _log_lines(path: Path) -> int:
    return len(path.read_text(errors="replace").splitlines()) if path.exists() else 0


def test_daemon_survives_hostile_input_during_a_transfer(
    hosts: tuple[LabHost, LabHost], tmp_path: Path
) -> None:
    a, b = hosts
    target = f"{a.addresses.underlay}:{LISTEN_PORT}"
    with tunnel((NodeKind.PILOTIF, NodeKind.WIREGUARD_GO), hosts, preshared_key=True) as nodes:
        daemon = nodes[0]
        assert isinstance(daemon, PilotifNode)
        captured = tmp_path / "underlay.pcap"
        with capture_udp(a.namespace, UNDERLAY_INTERFACE, LISTEN_PORT, captured, CAPTURE_PACKETS):
            assert ping(b.namespace, a.addresses.overlay_v4).all_answered
            warmup = tcp_transfer(b.namespace, a.namespace, a.addresses.overlay_v4, WARMUP_BYTES)
            assert warmup.intact, warmup
        kinds = {
            d.payload[0] for d in read_udp(captured) if d.destination[0] == a.addresses.underlay
        }
        assert {MESSAGE_INITIATION, MESSAGE_TRANSPORT} <= kinds, "nothing real to replay"
        log_lines_before = _log_lines(daemon.log_path)

        transfer = start_transfer(
            b.namespace,
            a.namespace,
            a.addresses.overlay_v4,
            TRANSFER_BYTES,
            min_seconds=TRANSFER_MIN_SECONDS,
        )
        spray = b.namespace.run(
            sys.executable,
            str(SPRAYER),
            "--target",
            target,
            "--captured",
            str(captured),
            "--max-packets",
            str(SPRAY_MAX_PACKETS),
            "--max-seconds",
            str(SPRAY_MAX_SECONDS),
            timeout_s=SPRAY_TIMEOUT_S,
        )
        sent = json.loads(spray.stdout)
        result = transfer.wait()

        assert result.intact, result
        assert daemon.running(), "the daemon died under hostile input"
        status = daemon.status()
        drops = status["drops"]
        not_counted = [reason.value for reason in PROVOKED_DROPS if not drops[reason.value]]
        assert not not_counted, f"no drops counted for {not_counted}: {drops}, sent {sent}"
        assert drops[DropReason.DECRYPT_FAILED] or drops[DropReason.UNKNOWN_INDEX], drops
        [peer] = status["peers"]
        assert peer["endpoint"] == f"{b.addresses.underlay}:{LISTEN_PORT}", "endpoint hijacked"
        new_log_lines = _log_lines(daemon.log_path) - log_lines_before
        assert new_log_lines <= MAX_NEW_LOG_LINES, f"{new_log_lines} log lines for {sent}"
        assert ping(b.namespace, a.addresses.overlay_v6).all_answered
