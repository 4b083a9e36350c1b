"""The Bind's stream side (node): one StreamLink per registry or relay address it is asked
to send to, the TransportChoice that says when the streams carry instead of UDP, and
the inbox where what the streams deliver waits for the data path.

The inbox is a socket the data path watches like the UDP sockets: a byte in it says
datagrams wait (kept in order with the address of the stream they came from, so they
are sorted as if that registry or relay had sent them over UDP). It stays readable
while any wait, so the data path's reader comes back for the rest.
"""

import contextlib
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pilotif.net.fallback import TransportChanged, TransportChoice, TransportMode
from pilotif.net.hostport import format_endpoint
from pilotif.net.proxy import Proxy
from pilotif.net.stream_client import StreamLink
from pilotif.util.logs import log_event
from pilotif.wg.events import Endpoint

MAX_INBOX: Final = 4096
"""Datagrams from the streams waiting for the data path; more are dropped (counted)."""
_WAKE: Final = b"\x01"


@dataclass(frozen=True)
class StreamOptions:
    """How a node's Bind uses streams (`pilotif up --transport`, `--proxy`)."""

    mode: TransportMode
    proxy: Proxy | None
    probe: bytes
    """What asks the registry over UDP whether UDP works again (a key request)."""
    on_change: Callable[[str], None] | None = None
    """Called with the new carrier (`udp`, `tcp`, `tcp via proxy`) when it changes: our
    address as the registry and relays see it changed, as after a move."""


class NodeStreams:
    """See the module docstring; `counters` are the Bind's."""

    def __init__(
        self,
        options: StreamOptions,
        counters: Counter[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.choice = TransportChoice(options.mode)
        self.proxy = options.proxy
        self.probe = options.probe
        self._on_change = options.on_change
        self.counters = counters
        self._clock = clock
        self._links: dict[Endpoint, StreamLink] = {}
        self._inbox: deque[tuple[bytes, Endpoint]] = deque()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._awake = False
        if self.choice.on_stream:
            log_change(TransportChanged(True, "forced"), self.carrier())

    def sockets(self) -> list[socket.socket]:
        """The inbox, to watch with the UDP sockets."""
        return [self._wake_in]

    def owns(self, sock: socket.socket) -> bool:
        """Whether `sock` is the inbox."""
        return sock is self._wake_in

    def receive(self) -> tuple[memoryview, int, Endpoint] | None:
        """The next datagram a stream delivered, as a receive from its address; None
        when none waits."""
        if not self._inbox:
            self._sleep()
            return None
        data, source = self._inbox.popleft()
        if not self._inbox:
            self._sleep()
        return memoryview(data), 0, source

    def carries(self, now: float) -> bool:
        """Whether the streams carry control datagrams and relayed peers now."""
        change = self.choice.use_stream(now)
        if change is not None:
            self._changed(change)
        return self.choice.on_stream

    def send(self, datagram: bytes, to: Endpoint) -> bool:
        """Send over the stream to `to` (opened if needed); False if dropped."""
        link = self._links.get(to)
        if link is None:
            link = self._links[to] = StreamLink(
                to, self.proxy, lambda data: self._arrived(data, to), self.counters, self._clock
            )
        return link.send(datagram)

    def heard_udp(self, now: float) -> None:
        """A datagram came from a registry or relay address over UDP."""
        change = self.choice.heard_udp(now)
        if change is not None:
            self._changed(change)

    def sent_udp(self, now: float) -> None:
        """A control datagram left for the registry or a relay over UDP."""
        self.choice.sent_udp(now)

    def status(self) -> dict[str, Any]:
        """What `pilotif status` shows: the mode, what carries now, the proxy, streams."""
        return {
            "mode": str(self.choice.mode),
            "carrier": self.carrier(),
            "proxy": str(self.proxy) if self.proxy is not None else None,
            "streams": {
                format_endpoint(to): "open" if link.opened else "opening"
                for to, link in self._links.items()
            },
        }

    def carrier(self) -> str:
        """`udp`, `tcp`, or `tcp via proxy`: what carries control and relayed datagrams."""
        if not self.choice.on_stream:
            return "udp"
        return "tcp via proxy" if self.proxy is not None else "tcp"

    def close(self) -> None:
        """Close the streams and the inbox."""
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._wake_in.close()
        self._wake_out.close()

    def _changed(self, change: TransportChanged) -> None:
        carrier = self.carrier()
        log_change(change, carrier)
        if self._on_change is not None:
            self._on_change(carrier)

    def _arrived(self, data: bytes, source: Endpoint) -> None:
        if len(self._inbox) >= MAX_INBOX:
            self.counters["stream_inbox_full"] += 1
            return
        self._inbox.append((data, source))
        if not self._awake:
            self._awake = True
            try:
                self._wake_out.send(_WAKE)
            except OSError:
                self.counters["stream_wake_failed"] += 1

    def _sleep(self) -> None:
        if self._awake:
            self._awake = False
            with contextlib.suppress(OSError):
                self._wake_in.recv(len(_WAKE))


def log_change(change: TransportChanged, carrier: str) -> None:
    """The log line of a change of carrier."""
    log_event("transport_changed", carrier=carrier, reason=change.reason)
