"""What the stack tells its application (frozen, taken with Stack.take_events)."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pilotif.netstack.tcp_connection import Connection


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed (an active open, or a passive one now in its listener's
    accept queue)."""

    connection: "Connection"


@dataclass(frozen=True, slots=True)
class Readable:
    """Data (or the peer's end of data) waits to be read."""

    connection: "Connection"


@dataclass(frozen=True, slots=True)
class Writable:
    """The send buffer, full at the last send, has room again."""

    connection: "Connection"


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is gone."""

    connection: "Connection"
    reason: str
    """'closed' (both sides finished), 'reset' (by the peer), 'refused' (a reset
    answered our SYN), 'timeout' (retransmissions or keepalives unanswered), 'aborted'
    (by the application)."""


Event = Connected | Readable | Writable | Closed
