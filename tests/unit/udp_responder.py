"""A UDP socket on loopback, served by a thread, that answers each datagram with what a
function makes of it: the fake registries and relays of tests that run the real CLI or
shell against a server."""

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pilotif.wg.events import Endpoint

LOOPBACK = "127.0.0.1"
POLL_S = 0.05
MAX_DATAGRAM_BYTES = 65_535

Answer = Callable[[bytes, Endpoint], list[bytes]]
"""A datagram and where it came from -> the datagrams to send back."""


@contextmanager
def udp_responder(answer: Answer) -> Iterator[Endpoint]:
    """The socket's endpoint while the block runs; the thread and socket end with it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(POLL_S)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM_BYTES)
            except TimeoutError:
                continue
            for reply in answer(data, source):
                sock.sendto(reply, source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield (LOOPBACK, sock.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        sock.close()
