"""The RFC 9293 connection state machine as one table: (state, event) -> (next state,
action). The connection (tcp_connection.py) reads segments in RFC 9293 3.10.7's order,
names what happened as an `Event`, and lets this table say where it goes and what to
send; a pair that is not in the table is a no-op for peer events (the segment processing
already dropped what it must) and a `LocalProtocolError` for the application's calls.
"""

import enum
from typing import Final, NamedTuple


class State(enum.Enum):
    """RFC 9293 section 3.3.2 (LISTEN lives in the stack's listeners)."""

    CLOSED = "closed"
    SYN_SENT = "syn-sent"
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    FIN_WAIT_1 = "fin-wait-1"
    FIN_WAIT_2 = "fin-wait-2"
    CLOSE_WAIT = "close-wait"
    CLOSING = "closing"
    LAST_ACK = "last-ack"
    TIME_WAIT = "time-wait"


class Event(enum.Enum):
    """What moves a connection: the application's calls, segments, timers."""

    CONNECT = "connect"
    """The application opens (active open)."""
    SYN = "syn"
    """A listener took a SYN (passive open) or a SYN crossed ours (simultaneous open)."""
    SYN_ACK = "syn-ack"
    """Our SYN was acknowledged by a SYN-ACK."""
    ACK_OF_SYN = "ack-of-syn"
    """Our SYN-ACK was acknowledged."""
    CLOSE = "close"
    """The application has no more to send."""
    FIN = "fin"
    """The peer's FIN, in order."""
    ACK_OF_FIN = "ack-of-fin"
    """Our FIN was acknowledged."""
    RST = "rst"
    """An acceptable reset."""
    ABORT = "abort"
    """The application aborts."""
    TIMEOUT = "timeout"
    """A timer gave up (retransmissions, keepalives) or TIME-WAIT ended."""


class Action(enum.Enum):
    """What a transition asks the connection to send or report."""

    NONE = "none"
    SEND_SYN = "send-syn"
    SEND_SYN_ACK = "send-syn-ack"
    SEND_ACK = "send-ack"
    SEND_FIN = "send-fin"
    """Queue a FIN after the data still to send."""
    SEND_RST = "send-rst"
    CONNECTED = "connected"
    """Report the connection open (and ACK what must be); a FIN queued before goes on
    as a CLOSE."""
    START_TIME_WAIT = "start-time-wait"
    DELETE = "delete"
    """Report the connection closed and forget it."""


class Transition(NamedTuple):
    """One row's outcome."""

    next_state: State
    action: Action


class LocalProtocolError(RuntimeError):
    """The application called something its connection's state does not allow."""


S = State
E = Event
A = Action
_SYNCHRONIZED: Final = (
    S.SYN_RECEIVED, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING,
    S.LAST_ACK, S.TIME_WAIT,
)  # fmt: skip

TRANSITIONS: Final[dict[tuple[State, Event], Transition]] = {
    # opening
    (S.CLOSED, E.CONNECT): Transition(S.SYN_SENT, A.SEND_SYN),
    (S.CLOSED, E.SYN): Transition(S.SYN_RECEIVED, A.SEND_SYN_ACK),
    (S.SYN_SENT, E.SYN_ACK): Transition(S.ESTABLISHED, A.CONNECTED),
    (S.SYN_SENT, E.SYN): Transition(S.SYN_RECEIVED, A.SEND_SYN_ACK),
    (S.SYN_RECEIVED, E.ACK_OF_SYN): Transition(S.ESTABLISHED, A.CONNECTED),
    # closing, our side first
    # a close before the handshake completes queues the FIN after the data (RFC 9293
    # 3.10.4 for SYN-RECEIVED; SYN-SENT the same, so that a request and its end can be
    # handed over before the connection is open): CONNECTED then closes
    (S.SYN_SENT, E.CLOSE): Transition(S.SYN_SENT, A.SEND_FIN),
    (S.SYN_RECEIVED, E.CLOSE): Transition(S.SYN_RECEIVED, A.SEND_FIN),
    (S.ESTABLISHED, E.CLOSE): Transition(S.FIN_WAIT_1, A.SEND_FIN),
    (S.FIN_WAIT_1, E.ACK_OF_FIN): Transition(S.FIN_WAIT_2, A.NONE),
    (S.FIN_WAIT_1, E.FIN): Transition(S.CLOSING, A.SEND_ACK),
    (S.FIN_WAIT_2, E.FIN): Transition(S.TIME_WAIT, A.START_TIME_WAIT),
    (S.CLOSING, E.ACK_OF_FIN): Transition(S.TIME_WAIT, A.START_TIME_WAIT),
    (S.TIME_WAIT, E.FIN): Transition(S.TIME_WAIT, A.START_TIME_WAIT),
    (S.TIME_WAIT, E.TIMEOUT): Transition(S.CLOSED, A.DELETE),
    # closing, the peer's side first
    (S.ESTABLISHED, E.FIN): Transition(S.CLOSE_WAIT, A.SEND_ACK),
    (S.SYN_RECEIVED, E.FIN): Transition(S.CLOSE_WAIT, A.SEND_ACK),
    (S.CLOSE_WAIT, E.CLOSE): Transition(S.LAST_ACK, A.SEND_FIN),
    (S.LAST_ACK, E.ACK_OF_FIN): Transition(S.CLOSED, A.DELETE),
    # resets, aborts and timeouts in every other state
    (S.SYN_SENT, E.RST): Transition(S.CLOSED, A.DELETE),
    (S.SYN_SENT, E.ABORT): Transition(S.CLOSED, A.DELETE),
    (S.SYN_SENT, E.TIMEOUT): Transition(S.CLOSED, A.DELETE),
    **{(state, E.RST): Transition(S.CLOSED, A.DELETE) for state in _SYNCHRONIZED},
    **{
        (state, E.ABORT): Transition(S.CLOSED, A.SEND_RST)
        for state in _SYNCHRONIZED
        if state is not S.TIME_WAIT
    },
    (S.TIME_WAIT, E.ABORT): Transition(S.CLOSED, A.DELETE),
    **{
        (state, E.TIMEOUT): Transition(S.CLOSED, A.SEND_RST)
        for state in _SYNCHRONIZED
        if state is not S.TIME_WAIT
    },
}
"""Every transition; RFC 9293 figure 5 plus the resets and timeouts it leaves to the
text. SEND_RST ends in CLOSED too: the connection sends its reset and is forgotten."""

QUEUEING_STATES: Final = frozenset({S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT})
"""States in which the application may queue data (sent once the handshake is done)."""
RECEIVING_STATES: Final = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
"""States in which the peer's data is taken (RFC 9293 3.10.7.4, seventh step)."""


def transition(state: State, event: Event) -> Transition | None:
    """The table's row for (state, event), or None when the pair has none."""
    return TRANSITIONS.get((state, event))
