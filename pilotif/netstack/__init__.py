"""The userspace TCP/IP stack (no root, no TUN), sans-IO: IP packets, the application's
calls and `now` in; IP packets, events and the next timer out.

- stack.py: the node's stack (demux by 4-tuple, listeners, ICMP echo, node and per-peer
  limits, counters of drops)
- tcp_connection.py: one connection (RFC 9293 segment processing, the handshake,
  timers), composed of tcp_receiver.py (receive buffer, window, SACK blocks, delayed
  ACKs) and tcp_sender.py (send buffer, retransmission, congestion control, SACK
  recovery, large segments)
- tcp_state.py: the state machine as a table
- rto.py (RFC 6298), congestion.py (NewReno; a delivery-rate model as BBR's),
  scoreboard.py (SACK, sender), reassembly.py (out of order, receiver), segment.py
  (parse and build), echo.py, config.py (every limit and timer), events.py
- ip_packet.py: the IP layer TCP and UDP share; udp.py: UDP (bound ports, port
  unreachable, bounded queues), which the userspace node routes to before this stack
"""

from pilotif.netstack.config import StackConfig
from pilotif.netstack.events import Closed, Connected, Event, Readable, Writable
from pilotif.netstack.stack import LimitError, Listener, Stack
from pilotif.netstack.tcp_connection import Connection
from pilotif.netstack.tcp_state import LocalProtocolError, State

__all__ = [
    "Closed",
    "Connected",
    "Connection",
    "Event",
    "LimitError",
    "Listener",
    "LocalProtocolError",
    "Readable",
    "Stack",
    "StackConfig",
    "State",
    "Writable",
]
