"""A delay cable for the lab: Ethernet frames cross between two links `delay_ms` later,
and a share `loss` of them (0 to 1) never does.

The machine's kernel has no netem, so the lab's "internet" would be a few microseconds
wide, and no hole punch can be timed against the NAT routers of a real internet, which
are milliseconds apart. The cable puts that distance back: it reads every frame that
arrives on one link (an AF_PACKET socket, promiscuous) and sends it out of the other
after the delay, both ways. Run it inside the namespace that holds both links:

    python -m pilotif_lab.cable LINK_A LINK_B DELAY_MS [LOSS]

It runs until SIGTERM. Frames are held in memory in order; one that the outgoing link
refuses is dropped (the links should have their offloads off, so no frame is larger
than the MTU).
"""

import heapq
import itertools
import random
import select
import signal
import socket
import struct
import sys
import time
from typing import Final

_ETH_P_ALL: Final = 0x0003
_SOL_PACKET: Final = 263
_PACKET_ADD_MEMBERSHIP: Final = 1
_PACKET_MR_PROMISC: Final = 1
_MAX_FRAME: Final = 65536
_IDLE_WAIT_S: Final = 1.0


def _open(link: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.bind((link, _ETH_P_ALL))
    index = socket.if_nametoindex(link)
    membership = struct.pack("iHH8s", index, _PACKET_MR_PROMISC, 0, bytes(8))
    sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, membership)
    sock.setblocking(False)
    return sock


def run(link_a: str, link_b: str, delay_s: float, loss: float = 0.0) -> None:
    """Carry frames between the two links, each `delay_s` late (a share `loss` of them
    dropped at random), until SIGTERM."""
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    a, b = _open(link_a), _open(link_b)
    other = {a: b, b: a}
    due: list[tuple[float, int, socket.socket, bytes]] = []
    order = itertools.count()
    while running[0]:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else _IDLE_WAIT_S
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for sock in readable:
            while True:
                try:
                    frame, address = sock.recvfrom(_MAX_FRAME)
                except BlockingIOError:
                    break
                if address[2] == socket.PACKET_OUTGOING:
                    continue  # what we sent ourselves
                if loss and random.random() < loss:
                    continue
                heapq.heappush(due, (now + delay_s, next(order), other[sock], frame))
        while due and due[0][0] <= time.monotonic():
            _, _, out, frame = heapq.heappop(due)
            try:
                out.send(frame)
            except OSError:
                continue


if __name__ == "__main__":
    run(
        sys.argv[1],
        sys.argv[2],
        float(sys.argv[3]) / 1000,
        float(sys.argv[4] if len(sys.argv) > 4 else 0),
    )
