"""`pilotif bench PEER [MB]` and `pilotif listen PORT`: plain TCP over the overlay, to a
peer's echo port and from peers to a port of this node."""

import contextlib
import json
import socket
import sys
import threading
import time
from pathlib import Path

import click

from pilotif.cli.common import (
    DAEMON_ERRORS,
    SERVICE_ERRORS,
    CliError,
    echo_result,
    json_option,
    json_output,
    node_request,
    service_address,
    state_dir_option,
)
from pilotif.cli.overlay import is_userspace, overlay_dial, userspace_listen
from pilotif.services.peer_client import ANSWER_TIMEOUT_S, CHUNK_BYTES, CONNECT_TIMEOUT_S
from pilotif.services.server import ECHO_PORT

BENCH_RTT_ROUNDS = 20
BENCH_DEFAULT_MB = 10


@click.command()
@click.argument("peer")
@click.argument("megabytes", type=click.IntRange(1, 1024), default=BENCH_DEFAULT_MB)
@json_option
@state_dir_option
@json_output(
    '{"peer", "rtt_ms", "megabytes", "seconds", "mbit_per_s"}',
    DAEMON_ERRORS + SERVICE_ERRORS,
)
def bench(peer: str, megabytes: int, as_json: bool, state_dir: Path) -> None:
    """Round trip and throughput to PEER over the overlay, through its echo port (7):
    MEGABYTES go there and come back."""
    address = service_address(state_dir, peer)
    size = megabytes * 10**6
    try:
        with overlay_dial(state_dir)(address, ECHO_PORT, CONNECT_TIMEOUT_S) as conn:
            conn.settimeout(ANSWER_TIMEOUT_S)
            rtts = []
            for _ in range(BENCH_RTT_ROUNDS):
                started = time.perf_counter()
                conn.sendall(b"x")
                conn.recv(1)
                rtts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            sender = threading.Thread(target=_send_zeros, args=(conn, size), daemon=True)
            sender.start()
            back = 0
            while back < size:
                chunk = conn.recv(CHUNK_BYTES)
                if not chunk:
                    raise CliError("the peer closed the echo early", "service_failed")
                back += len(chunk)
            seconds = time.perf_counter() - started
            sender.join()
    except ConnectionRefusedError:
        raise CliError(f"nothing listens on {address}:{ECHO_PORT}", "service_closed") from None
    except OSError as error:
        raise CliError(f"{peer}: {error.strerror or error}", "peer_unreachable") from None
    rtt_ms = sorted(rtts)[len(rtts) // 2]
    mbit_per_s = size * 8 / seconds / 1e6
    data = {
        "peer": peer,
        "rtt_ms": round(rtt_ms, 3),
        "megabytes": megabytes,
        "seconds": round(seconds, 3),
        "mbit_per_s": round(mbit_per_s, 1),
    }
    text = (
        f"{peer}: rtt {rtt_ms:.2f} ms (median of {BENCH_RTT_ROUNDS}), "
        f"{megabytes} MB there and back in {seconds:.2f} s = {mbit_per_s:.0f} Mbit/s each way"
    )
    echo_result(as_json, data, text)


def _send_zeros(conn: socket.socket, size: int) -> None:
    block = bytes(CHUNK_BYTES)
    sent = 0
    with contextlib.suppress(OSError):
        while sent < size:
            part = block[: min(CHUNK_BYTES, size - sent)]
            conn.sendall(part)
            sent += len(part)


@click.command()
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many lines.")
@state_dir_option
def listen(port: int, count: int | None, state_dir: Path) -> None:
    """Print what trusted peers send to PORT of this node's virtual address, one JSON line
    per line received (`{"peer", "port", "data"}`), until --count lines or Ctrl-C."""
    node = node_request(state_dir, "status").get("status", {}).get("node") or {}
    address = node.get("ipv4")
    if not address:
        raise CliError("this node has no virtual address yet", "not_joined")
    if is_userspace(state_dir):
        _listen_through_daemon(state_dir, port, count)
        return
    try:
        server = socket.create_server((str(address), port))
    except OSError as error:
        raise CliError(
            f"cannot listen on {address}:{port}: {error.strerror}", "bad_input"
        ) from None
    print(f"pilotif: listening on {address}:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    with server:
        while count is None or seen < count:
            conn, (peer, _) = server.accept()
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    text = line.decode(errors="replace").rstrip("\n")
                    click.echo(json.dumps({"peer": peer, "port": port, "data": text}))
                    seen += 1
                    if count is not None and seen >= count:
                        return


def _listen_through_daemon(state_dir: Path, port: int, count: int | None) -> None:
    """`listen` on a userspace node: the daemon serves the port and passes the lines on."""
    lines = userspace_listen(state_dir, port)
    print(
        f"pilotif: listening on overlay port {port} (Ctrl-C to stop)", file=sys.stderr, flush=True
    )
    for seen, line in enumerate(lines, start=1):
        click.echo(line)
        if count is not None and seen >= count:
            return
