"""Which transport carries a node's control datagrams and relayed peers, sans-IO (`now`
in, a decision out): UDP, or the stream (net/stream.py) to the registry and relays.

`--transport udp` never streams and `tcp` always does. `auto` (the default) starts on UDP
and moves to the stream when datagrams sent to the registry over UDP got nothing back for
FALLBACK_AFTER_S; on the stream it keeps asking the registry over UDP (a key request,
answered statelessly, so the registry's view of where we are does not move) every
UDP_PROBE_EVERY_S, and moves back to UDP as soon as anything arrives over UDP.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

FALLBACK_AFTER_S: Final = 2.0
"""How long UDP to the registry may go unanswered before the stream carries instead
(the registry link retries every second, and gives up after five)."""
UDP_PROBE_EVERY_S: Final = 10.0
"""How often a node on the stream asks the registry over UDP whether UDP works again."""


class TransportMode(StrEnum):
    """`pilotif up --transport`."""

    AUTO = "auto"
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True)
class TransportChanged:
    """The node's control datagrams and relayed peers moved to the stream or back."""

    on_stream: bool
    reason: str
    """`udp_unanswered`, `udp_answered`, or `forced` (--transport tcp)."""


class TransportChoice:
    """The decision, from what was sent and heard over UDP and when."""

    def __init__(self, mode: TransportMode) -> None:
        self.mode = mode
        self.on_stream = mode is TransportMode.TCP
        self._unanswered_since: float | None = None
        self._last_probe: float | None = None

    def sent_udp(self, now: float) -> None:
        """A datagram went to the registry over UDP."""
        if self._unanswered_since is None:
            self._unanswered_since = now

    def heard_udp(self, now: float) -> TransportChanged | None:
        """A datagram came from the registry or a relay over UDP: UDP works both ways."""
        self._unanswered_since = None
        if self.on_stream and self.mode is TransportMode.AUTO:
            self.on_stream = False
            return TransportChanged(False, "udp_answered")
        return None

    def use_stream(self, now: float) -> TransportChanged | None:
        """Decide before a send: the change, if this moment moves us to the stream."""
        if self.on_stream or self.mode is not TransportMode.AUTO:
            return None
        since = self._unanswered_since
        if since is not None and now - since >= FALLBACK_AFTER_S:
            self.on_stream = True
            self._last_probe = now
            return TransportChanged(True, "udp_unanswered")
        return None

    def probe_due(self, now: float) -> bool:
        """Whether to ask over UDP now (on the stream in auto mode, every
        UDP_PROBE_EVERY_S); taken when it says so."""
        if not self.on_stream or self.mode is not TransportMode.AUTO:
            return False
        if self._last_probe is not None and now - self._last_probe < UDP_PROBE_EVERY_S:
            return False
        self._last_probe = now
        return True
