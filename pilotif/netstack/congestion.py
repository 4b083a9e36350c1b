"""NewReno congestion control (RFC 5681, RFC 6582), in bytes: slow start with
appropriate byte counting (RFC 3465), congestion avoidance, the window after a fast
retransmit and after a timeout. Loss detection (duplicate ACKs, SACK, partial ACKs) is
the connection's; this class only sizes the window."""

from typing import Final

INITIAL_WINDOW_SEGMENTS: Final = 10
"""RFC 6928's initial window, in segments (capped by INITIAL_WINDOW_BYTES)."""
INITIAL_WINDOW_BYTES: Final = 14600
SLOW_START_ABC_LIMIT: Final = 2
"""RFC 3465's L: slow start grows at most this many segments per ACK."""
LOSS_WINDOW_SEGMENTS: Final = 1
"""The window after a retransmission timeout (RFC 5681's LW)."""
MIN_SSTHRESH_SEGMENTS: Final = 2


class NewReno:
    """The congestion window and slow-start threshold of one connection."""

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = min(INITIAL_WINDOW_SEGMENTS * mss, max(2 * mss, INITIAL_WINDOW_BYTES))
        self.ssthresh = 2**31
        self._avoidance_bytes = 0

    def on_ack(self, acked: int) -> None:
        """New data acknowledged outside loss recovery."""
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, SLOW_START_ABC_LIMIT * self.mss)
            return
        self._avoidance_bytes += acked
        if self._avoidance_bytes >= self.cwnd:
            self._avoidance_bytes -= self.cwnd
            self.cwnd += self.mss

    def on_loss(self, flight: int) -> None:
        """Fast retransmit: halve (RFC 5681 eq. 4), stay there through recovery."""
        self.ssthresh = max(flight // 2, MIN_SSTHRESH_SEGMENTS * self.mss)
        self.cwnd = self.ssthresh

    def on_recovery_end(self) -> None:
        """Full acknowledgement of what was outstanding at the loss (RFC 6582 3.2 step 3)."""
        self.cwnd = self.ssthresh
        self._avoidance_bytes = 0

    def on_timeout(self, flight: int) -> None:
        """Retransmission timeout: the threshold halves, the window is one segment."""
        self.ssthresh = max(flight // 2, MIN_SSTHRESH_SEGMENTS * self.mss)
        self.cwnd = LOSS_WINDOW_SEGMENTS * self.mss
        self._avoidance_bytes = 0
