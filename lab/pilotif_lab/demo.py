"""The static demo (`scripts/demo.sh --static`): two agents in two network namespaces
talk over pilotif, step by step.

Builds the lab's two hosts, starts a pilotif daemon on each, pings across the overlay over
IPv4 and IPv6, sends a message over plain TCP from one agent to the other, shows what each
daemon reports, and tears everything down.
"""

import os
import time

from pilotif_lab.checks import PingResult, ping, start_transfer
from pilotif_lab.netns import LabError
from pilotif_lab.topology import LabHost, NodeKind, host_pair, tunnel

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_ROOT = 2
DEMO_MESSAGE = '{"action": "start_stream", "from": "agent-a"}'
DEMO_TCP_PORT = 7000
PING_COUNT = 3
_KEY_PREVIEW_CHARS = 8


def _step(text: str) -> None:
    print(text, flush=True)


def _ping_line(source: LabHost, address: str, result: PingResult) -> str:
    rtt = f", average {result.average_rtt_ms:.2f} ms" if result.average_rtt_ms is not None else ""
    return (
        f"     {source.role.upper()} pings {address}: "
        f"{result.received}/{result.transmitted} replies{rtt}"
    )


def _demo(a: LabHost, b: LabHost, kind: NodeKind) -> bool:
    _step(
        f"1. two hosts: namespaces {a.namespace.name} and {b.namespace.name}, joined by a "
        f"virtual cable ({a.addresses.underlay} <-> {b.addresses.underlay})"
    )
    with tunnel((kind, kind), (a, b), preshared_key=True) as nodes:
        _step(f"2. {kind} up on both agents, each with the other as its only peer")
        for host, node in zip((a, b), nodes, strict=True):
            key = node.config.public_key[:_KEY_PREVIEW_CHARS]
            _step(
                f"     {host.role.upper()}: interface {node.interface}, "
                f"{host.addresses.overlay_v4} and {host.addresses.overlay_v6}, key {key}..."
            )
        ok = True
        _step("3. ping across the overlay (the first packet starts the WireGuard handshake)")
        for address in (b.addresses.overlay_v4, b.addresses.overlay_v6):
            result = ping(a.namespace, address, PING_COUNT)
            ok = ok and result.all_answered
            _step(_ping_line(a, address, result))
        result = ping(b.namespace, a.addresses.overlay_v4, PING_COUNT)
        ok = ok and result.all_answered
        _step(_ping_line(b, a.addresses.overlay_v4, result))
        transfer = start_transfer(
            a.namespace,
            b.namespace,
            b.addresses.overlay_v4,
            message=DEMO_MESSAGE,
            port=DEMO_TCP_PORT,
        ).wait()
        ok = ok and transfer.received_text == DEMO_MESSAGE
        _step(
            f"4. plain TCP from A to {b.addresses.overlay_v4}:{DEMO_TCP_PORT}: "
            f"B received {transfer.received_text!r}"
        )
        _step(f"5. what each {kind} reports:")
        for host, node in zip((a, b), nodes, strict=True):
            for peer in node.peers():
                age = (
                    f"{time.time() - peer.latest_handshake:.1f} s ago"
                    if peer.latest_handshake is not None
                    else "never"
                )
                _step(
                    f"     {host.role.upper()}: peer {peer.public_key[:_KEY_PREVIEW_CHARS]}... "
                    f"at {peer.endpoint}, handshake {age}, "
                    f"rx {peer.rx_bytes} B, tx {peer.tx_bytes} B"
                )
        _step(f"6. {kind} down on both agents")
    return ok


def run_demo() -> int:
    """Run the demo, print what each step did; 0 when every check passed."""
    if os.geteuid() != 0:
        print("the demo builds network namespaces and needs root: run it with sudo")
        return EXIT_NOT_ROOT
    try:
        with host_pair() as (a, b):
            ok = _demo(a, b, NodeKind.PILOTIF)
    except LabError as error:
        print(f"demo failed: {error}")
        return EXIT_FAILED
    _step("7. namespaces deleted, nothing left behind")
    if not ok:
        print("demo failed: some pings or the message did not get through")
        return EXIT_FAILED
    print("demo passed")
    return EXIT_OK
