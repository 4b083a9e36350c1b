"""A delay cable for the lab: Ethernet frames cross between two links `delay_ms` later,
and a share `loss` of them (0 to 1) never does.

The machine's kernel has no netem, so the lab's "internet" would be a few microseconds
wide, and no hole punch can be timed against the NAT routers of a real internet, which
are milliseconds apart. The cable puts that distance back: it reads every frame that
arrives on one link (an AF_PACKET socket, promiscuous) and sends it out of the other
after the delay, both ways. Run it inside the namespace that holds both links:

    python -m pilotif_lab.cable LINK_A LINK_B DELAY_MS [LOSS]

It runs until SIGTERM (or until a link goes away), then prints what it did as one JSON
line on stdout (per direction: frames carried, dropped at random as configured, dropped
by the kernel because the socket's buffer was full, refused by the outgoing link, the
most frames held at once, and how late the latest frame left). Frames are held in
memory in order (the delay is the same for all: a queue per direction); one that the
outgoing link refuses is dropped (the links should have their offloads off, so no frame
is larger than the MTU). The sockets' buffers are CABLE_BUFFER_BYTES, so that the
cable, not its socket, decides what is lost: a burst of a fast sender waits in them
while the process is busy.
"""

import json
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Final

_ETH_P_ALL: Final = 0x0003
_SOL_PACKET: Final = 263
_PACKET_ADD_MEMBERSHIP: Final = 1
_PACKET_MR_PROMISC: Final = 1
_PACKET_STATISTICS: Final = 6
_PACKET_IGNORE_OUTGOING: Final = 23
_SO_RCVBUFFORCE: Final = 33
_SO_SNDBUFFORCE: Final = 32
_TPACKET_STATS: Final = struct.Struct("II")
"""struct tpacket_stats: frames received, frames dropped (reading resets both)."""
_MAX_FRAME: Final = 65536
_IDLE_WAIT_S: Final = 1.0
CABLE_BUFFER_BYTES: Final = 64 * 1024 * 1024
"""Each socket's receive and send buffer (forced past rmem_max: the cable runs as root);
the kernel's default (~208 KiB, ~90 frames) overflowed at a window's burst."""


@dataclass
class DirectionCounters:
    """What one direction of the cable did."""

    carried: int = 0
    lost: int = 0
    """Dropped at random (the configured loss)."""
    socket_drops: int = 0
    """Dropped by the kernel: the receiving socket's buffer was full."""
    send_failures: int = 0
    """Refused by the outgoing link."""
    most_held: int = 0
    """The most frames held at once (in flight on the cable)."""
    latest_late_ms: float = 0.0
    """The most a frame left after its time."""


def _open(link: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.bind((link, _ETH_P_ALL))
    index = socket.if_nametoindex(link)
    membership = struct.pack("iHH8s", index, _PACKET_MR_PROMISC, 0, bytes(8))
    sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, membership)
    sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)  # not what we send ourselves
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, CABLE_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, CABLE_BUFFER_BYTES)
    sock.setblocking(False)
    return sock


def _socket_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped for `sock` since the last call."""
    _, drops = _TPACKET_STATS.unpack(
        sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, _TPACKET_STATS.size)
    )
    return int(drops)


def run(
    link_a: str, link_b: str, delay_s: float, loss: float = 0.0
) -> dict[str, DirectionCounters]:
    """Carry frames between the two links, each `delay_s` late (a share `loss` of them
    dropped at random), until SIGTERM; what each direction ("a>b", "b>a") did."""
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    a, b = _open(link_a), _open(link_b)
    other = {a: b, b: a}
    held: dict[socket.socket, deque[tuple[float, bytes]]] = {a: deque(), b: deque()}
    """Per incoming socket, its frames in order with the time each is due out."""
    counters = {a: DirectionCounters(), b: DirectionCounters()}
    while running[0]:
        due = [queue[0][0] for queue in held.values() if queue]
        timeout = max(0.0, min(due) - time.monotonic()) if due else _IDLE_WAIT_S
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for sock in readable:
            queue, counter = held[sock], counters[sock]
            while True:
                try:
                    frame = sock.recv(_MAX_FRAME)
                except BlockingIOError:
                    break
                except OSError:  # the link is gone (its namespace was deleted)
                    running[0] = False
                    break
                if loss and random.random() < loss:
                    counter.lost += 1
                    continue
                queue.append((now + delay_s, frame))
            counter.most_held = max(counter.most_held, len(queue))
        now = time.monotonic()
        for sock, queue in held.items():
            counter, out = counters[sock], other[sock]
            while queue and queue[0][0] <= now:
                at, frame = queue.popleft()
                counter.latest_late_ms = max(counter.latest_late_ms, 1000 * (now - at))
                try:
                    out.send(frame)
                except OSError:
                    counter.send_failures += 1
                    continue
                counter.carried += 1
    for sock, counter in counters.items():
        counter.socket_drops += _socket_drops(sock)
    return {"a>b": counters[a], "b>a": counters[b]}


if __name__ == "__main__":
    done = run(
        sys.argv[1],
        sys.argv[2],
        float(sys.argv[3]) / 1000,
        float(sys.argv[4] if len(sys.argv) > 4 else 0),
    )
    print(json.dumps({name: asdict(counter) for name, counter in done.items()}), flush=True)
