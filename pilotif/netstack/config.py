"""The knobs of the userspace TCP/IP stack, with the units in their names: buffer caps
per connection, the node's caps (connections, half-open, per peer, buffered bytes),
timers. One frozen value shared by the stack and its connections."""

from dataclasses import dataclass
from typing import Final

from pilotif.netstack.congestion import Congestion
from pilotif.packet.ip import IPV4_MIN_HEADER_BYTES, IPV6_HEADER_BYTES, TCP_MIN_HEADER_BYTES

DEFAULT_MTU: Final = 1420
"""The overlay's MTU (WireGuard's usual 1420); the path MTU is the caller's parameter."""
MAX_WINDOW_SCALE: Final = 14
"""The largest window shift RFC 7323 allows."""


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Limits and timers of one stack (every connection of it shares them)."""

    mtu: int = DEFAULT_MTU
    """Path MTU in bytes: the MSS we announce and send with is this less the headers."""
    send_buffer_bytes: int = 2 * 1024 * 1024
    """Cap of a connection's bytes not yet acknowledged by the peer (sent or not)."""
    receive_buffer_bytes: int = 2 * 1024 * 1024
    """Cap of a connection's received bytes the application has not read, and so of the
    window it advertises (out-of-order bytes are inside that window)."""
    initial_receive_window_bytes: int = 64 * 1024
    """What a new connection's window (with its unread data) may reach until it has
    received half of it; then `receive_buffer_bytes` (as Linux's receive buffer autotuning
    starts small), so that a connection that carries little promises little of the
    node's memory budget. A sender's first round trips fit in it (ten segments, then
    twenty or thirty): none waits for it."""
    max_out_of_order_segments: int = 64
    """Cap of the separate ranges held out of order per connection (each one costs a list
    entry beyond its bytes); a segment that would make more is dropped."""
    memory_budget_bytes: int = 256 * 1024 * 1024
    """Cap of the bytes all the node's connections buffer together (receive buffers with
    their out-of-order data, send buffers; memory.py). The per-connection caps alone let
    a peer that never reads, or fills every window out of order, make the node hold
    gigabytes (1,024 connections of 4 MiB each way: 8 GiB). 256 MiB lets 32 transfers
    fill the userspace node's 4 MiB buffers both ways at once (one at 10 MB/s over
    100 ms needs 1 MB in flight), more than a node runs, and stays a fraction of a small
    machine's memory."""
    memory_pressure_fraction: float = 0.75
    """From this share of `memory_budget_bytes` on, the node is under pressure (Linux's
    tcp_mem pressure): out-of-order data is dropped, and only connections that hold
    little take more (memory.py says how much)."""
    max_sack_ranges: int = 64
    """Cap of the ranges the sender remembers the peer has SACKed."""
    max_connections: int = 4096
    """Cap of the connections of the node, in every state but TIME-WAIT."""
    max_time_wait: int = 4096
    """Cap of the connections in TIME-WAIT (they hold no send buffer); past it the oldest
    ends early (Linux's tcp_max_tw_buckets does the same)."""
    max_half_open: int = 256
    """Cap of the connections in SYN-RECEIVED (the SYN queue) of the node."""
    max_connections_per_peer: int = 256
    """Cap of the connections with one remote address."""
    max_half_open_per_peer: int = 32
    """Cap of one remote address's connections in SYN-RECEIVED: one peer cannot fill
    the node's SYN queue."""
    sack: bool = True
    """Offer and use SACK (RFC 2018)."""
    window_scale: bool = True
    """Offer window scaling (RFC 7323)."""
    initial_rto_s: float = 1.0
    """RFC 6298's initial retransmission timeout."""
    min_rto_s: float = 0.2
    """The floor of the retransmission timeout (Linux's 200 ms; RFC 6298 says 1 s, which
    is much more than an overlay's round trips)."""
    max_rto_s: float = 60.0
    """The ceiling of the retransmission timeout after backoff."""
    max_retransmissions: int = 12
    """Retransmissions of one segment (or persist probes unanswered) before giving up."""
    syn_retries: int = 6
    """Retransmissions of a SYN (or SYN-ACK) before giving up."""
    congestion: Congestion = "newreno"
    """The congestion controller (congestion.py): "newreno", loss-bound, or
    "delivery_rate", BBR's model of the path, which random loss does not slow down."""
    large_segments: bool = False
    """Send a run of full segments as one large segment (a `SuperPacket` of up to 64 KiB,
    headers once: what a TUN with TSO hands over), for the data path to cut and seal
    natively (`seal_tso`); off, every packet out is one segment with its checksums."""
    delayed_ack_s: float = 0.04
    """How long an ACK for a lone full segment may wait (RFC 9293 3.8.6.3: under 0.5 s)."""
    time_wait_s: float = 60.0
    """TIME-WAIT's length (2 MSL)."""
    keepalive_idle_s: float | None = None
    """Idle time before keepalive probes start; None sends none."""
    keepalive_interval_s: float = 75.0
    """Time between unanswered keepalive probes."""
    keepalive_probes: int = 9
    """Unanswered keepalive probes before the connection is dropped."""
    challenge_acks_per_s: int = 1000
    """Cap of the answers to bad segments the node sends a second: RFC 5961 challenge
    ACKs, ACKs to segments outside the window, resets to segments for no connection."""

    def mss_bytes(self, ipv6: bool) -> int:
        """The largest payload of one segment on this path."""
        ip_header = IPV6_HEADER_BYTES if ipv6 else IPV4_MIN_HEADER_BYTES
        return self.mtu - ip_header - TCP_MIN_HEADER_BYTES

    def receive_window_shift(self) -> int:
        """The window shift we offer: the smallest that lets the buffer's cap be said."""
        if not self.window_scale:
            return 0
        shift = 0
        while (self.receive_buffer_bytes >> shift) > 0xFFFF and shift < MAX_WINDOW_SCALE:
            shift += 1
        return shift
