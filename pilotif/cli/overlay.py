"""How the CLI reaches a peer's port: through the kernel on a TUN node, through the
daemon's control socket on a userspace node (`dial`: the connection becomes a byte pipe;
`ping`: the node's own ICMP echo), since its overlay addresses are on no interface."""

import socket
from collections.abc import Iterator
from pathlib import Path

from pilotif.cli.common import CliError, node_request
from pilotif.daemon.api import ControlError, pipe
from pilotif.services.peer_client import Dial, kernel_dial
from pilotif.util.paths import StatePaths

_CLOSED_CODE = "service_closed"
_LISTEN_OPEN_S = 10.0
"""How long the daemon may take to start serving a port for `listen`."""


def is_userspace(state_dir: Path) -> bool:
    """Whether the node of `state_dir` runs with a userspace stack (`up --userspace`)."""
    return node_request(state_dir, "status").get("status", {}).get("userspace") is not None


def overlay_dial(state_dir: Path) -> Dial:
    """The Dial that reaches peers from the node of `state_dir` (which kind of node it is
    is asked at the first connection)."""
    control = StatePaths(state_dir.absolute()).control_socket

    def through_daemon(address: str, port: int, timeout_s: float) -> socket.socket:
        try:
            return pipe(
                control, "dial", timeout_s + 1, address=address, port=port, timeout=timeout_s
            )
        except ControlError as error:
            if error.code == _CLOSED_CODE:
                raise ConnectionRefusedError(str(error)) from None
            raise OSError(str(error)) from None

    def dial(address: str, port: int, timeout_s: float) -> socket.socket:
        chosen = through_daemon if is_userspace(state_dir) else kernel_dial
        return chosen(address, port, timeout_s)

    return dial


def userspace_ping(state_dir: Path, address: str, timeout_s: float) -> float | None:
    """One echo from a userspace node: the round trip in ms, or None."""
    reply = node_request(state_dir, "ping", address=address, timeout=timeout_s)
    rtt = reply.get("rtt_ms")
    return None if rtt is None else float(rtt)


def userspace_listen(state_dir: Path, port: int) -> Iterator[str]:
    """The JSON lines a userspace node passes on for what peers send to `port`."""
    control = StatePaths(state_dir.absolute()).control_socket
    try:
        sock = pipe(control, "listen", _LISTEN_OPEN_S, port=port)
    except ControlError as error:
        raise CliError.of(error) from None
    with sock, sock.makefile("rb") as lines:
        for line in lines:
            yield line.decode(errors="replace").rstrip("\n")
