"""Congestion control, in bytes: the window a connection may have in flight.

Two controllers behind one interface (`Controller`; `new_controller` picks the one the
config names):

- NewReno (RFC 5681, RFC 6582): slow start with appropriate byte counting (RFC 3465),
  congestion avoidance, the window halved after a fast retransmit, one segment after a
  timeout. Loss-bound: at 1% random loss and 100 ms it carries ~0.17 MB/s (Mathis).
- DeliveryRate, a model-based controller as BBR's (Cardwell et al., 2016): the window is
  twice the path's bandwidth-delay product, the bandwidth the highest delivery rate of
  the last BANDWIDTH_WINDOW_ROUNDS round trips (acknowledged and SACKed bytes a round),
  the delay the lowest round trip of MIN_RTT_WINDOW_S; a round in which the application
  left the window unfilled (`on_app_limited`) measured the application, not the path,
  and counts only if it beat the bandwidth (BBR's app-limited samples: a few small
  requests over a long path must not make the next large answer crawl at their rate).
  A loss repaired by SACK or fast retransmit does not shrink it (random loss is not
  congestion); a timeout leaves one segment in flight until new data is acknowledged,
  then the model's window again. Never
  below the initial window; each round can deliver twice the last (as slow start) until
  the path's bandwidth holds it. Paced (pacing.py) at a gain times the bandwidth, as BBR:
  STARTUP_PACING_GAIN until the bandwidth stops growing (FULL_PIPE_ROUNDS rounds without
  FULL_PIPE_GROWTH), then PROBE_PACING_GAINS, one a round (a round above the estimate
  to find more, one below to drain what that queued, then at the estimate). A path
  whose lowest round trip is under PACING_MIN_RTT_S is not paced (a LAN: see there).

Loss detection (duplicate ACKs, SACK, partial ACKs) is the connection's; these classes
only size the window.
"""

from collections import deque
from typing import Final, Literal, Protocol

INITIAL_WINDOW_SEGMENTS: Final = 10
"""RFC 6928's initial window, in segments (capped by INITIAL_WINDOW_BYTES)."""
INITIAL_WINDOW_BYTES: Final = 14600
SLOW_START_ABC_LIMIT: Final = 2
"""RFC 3465's L: slow start grows at most this many segments per ACK."""
LOSS_WINDOW_SEGMENTS: Final = 1
"""The window after a retransmission timeout (RFC 5681's LW)."""
MIN_SSTHRESH_SEGMENTS: Final = 2
BANDWIDTH_WINDOW_ROUNDS: Final = 10
"""Round trips whose highest delivery rate is the bandwidth (BBR's 10)."""
MIN_RTT_WINDOW_S: Final = 10.0
"""How long the lowest round trip stands unless a lower one comes (BBR's 10 s)."""
CWND_GAIN: Final = 2
"""The window in bandwidth-delay products (BBR's cwnd_gain)."""
STARTUP_PACING_GAIN: Final = 2.885
"""The pacing rate in bandwidths while the bandwidth grows (BBR's 2/ln 2: the rate
doubles each round)."""
FULL_PIPE_GROWTH: Final = 1.25
FULL_PIPE_ROUNDS: Final = 3
"""The pipe is full once the bandwidth grew by less than FULL_PIPE_GROWTH in this many
rounds in a row (BBR's)."""
PROBE_PACING_GAINS: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
"""Once the pipe is full, the pacing gain of each round in turn (BBR's ProbeBW cycle)."""
PROBE_DRAIN_ROUND: Final = 1
"""Where the cycle starts once the pipe is full: the round below the estimate."""
PACING_MIN_RTT_S: Final = 0.002
"""A path whose lowest round trip is below this is not paced. There the window (two
bandwidth-delay products) is a couple of pacing trains at most, the event loop's timers
are as coarse as the round trip, and the bandwidth measured is what the node's CPU
managed, not the path's: pacing would hold the sender to its own last figure (Linux
lets a short round trip burst the same way: TSQ and fq pace it far above what a
CPU-bound sender reaches). On the lab's LAN the lowest round trips are 0.2-0.7 ms;
over 100 ms, pacing is what keeps the cable's queues from overflowing."""

Congestion = Literal["newreno", "delivery_rate"]
"""The controllers `StackConfig.congestion` names."""


class Controller(Protocol):
    """What the sender tells a congestion controller, and the window it reads back."""

    cwnd: int
    """Bytes that may be in flight."""

    def on_ack(self, acked: int) -> None:
        """New data acknowledged outside loss recovery."""

    def on_loss(self, flight: int) -> None:
        """Fast retransmit: loss recovery starts with `flight` bytes outstanding."""

    def on_recovery_end(self) -> None:
        """What was outstanding at the loss is acknowledged."""

    def on_timeout(self, flight: int) -> None:
        """The retransmission timer expired with `flight` bytes outstanding."""

    def on_rtt(self, rtt_s: float, now: float) -> None:
        """A round trip measured (Karn's rule applied)."""

    def on_delivered(self, delivered: int, sent: int, now: float) -> None:
        """An ACK arrived: `delivered` is the highest byte offset acknowledged plus the
        bytes SACKed above it, `sent` the highest offset sent."""

    def on_app_limited(self) -> None:
        """Everything queued was sent with room left in the window: the application, not
        the path, limits what is in flight."""

    @property
    def pacing_rate(self) -> float:
        """Bytes a second the sender may release (0: unpaced)."""
        ...


def new_controller(congestion: Congestion, mss: int) -> Controller:
    """The controller `congestion` names, for segments of `mss` bytes."""
    if congestion == "delivery_rate":
        return DeliveryRate(mss)
    return NewReno(mss)


def initial_window(mss: int) -> int:
    """RFC 6928's initial window for `mss`."""
    return min(INITIAL_WINDOW_SEGMENTS * mss, max(2 * mss, INITIAL_WINDOW_BYTES))


class NewReno:
    """The congestion window and slow-start threshold of one connection."""

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = initial_window(mss)
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

    def on_rtt(self, rtt_s: float, now: float) -> None:
        """NewReno sizes its window from losses only."""

    def on_delivered(self, delivered: int, sent: int, now: float) -> None:
        """NewReno sizes its window from losses only."""

    def on_app_limited(self) -> None:
        """NewReno sizes its window from losses only."""

    @property
    def pacing_rate(self) -> float:
        """NewReno is not paced."""
        return 0.0


class DeliveryRate:
    """BBR's model and its pacing gains; see the module docstring."""

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = initial_window(mss)
        self._rates: deque[float] = deque(maxlen=BANDWIDTH_WINDOW_ROUNDS)
        """Bytes a second delivered in each of the last rounds."""
        self._min_rtt_s: float | None = None
        self._min_rtt_at = 0.0
        self._round: tuple[int, int, float] | None = None
        """(offset that ends the round, bytes delivered at its start, when it started)."""
        self._after_timeout = False
        """Whether the timer expired and no new data was acknowledged since."""
        self._full_bandwidth = 0.0
        """The bandwidth the pipe-full check compares with."""
        self._rounds_without_growth = 0
        self._probe_round: int | None = None
        """Once the pipe is full, the round's place in PROBE_PACING_GAINS."""
        self._app_limited = False
        """Whether the application left the window unfilled during this round."""

    @property
    def bandwidth(self) -> float:
        """The path's bandwidth as measured, in bytes a second (0: nothing yet)."""
        return max(self._rates, default=0.0)

    @property
    def pacing_rate(self) -> float:
        """The pacing gain of the round times the bandwidth (0, unpaced, until a round
        measured it, and on a path shorter than PACING_MIN_RTT_S)."""
        if self._min_rtt_s is not None and self._min_rtt_s < PACING_MIN_RTT_S:
            return 0.0
        if self._probe_round is None:
            return STARTUP_PACING_GAIN * self.bandwidth
        return PROBE_PACING_GAINS[self._probe_round] * self.bandwidth

    def on_ack(self, acked: int) -> None:
        """The window follows the model (`on_delivered`), not each ACK; the first ACK of
        new data after a timeout gives it back (the path delivers again)."""
        if self._after_timeout:
            self._after_timeout = False
            self.cwnd = self._window()

    def on_loss(self, flight: int) -> None:
        """A loss SACK or duplicate ACKs found leaves the window as it is."""

    def on_recovery_end(self) -> None:
        """Nothing was reduced at the loss: nothing to restore."""

    def on_timeout(self, flight: int) -> None:
        """One segment in flight until new data is acknowledged."""
        self.cwnd = LOSS_WINDOW_SEGMENTS * self.mss
        self._after_timeout = True

    def on_rtt(self, rtt_s: float, now: float) -> None:
        expired = now - self._min_rtt_at > MIN_RTT_WINDOW_S
        if self._min_rtt_s is None or rtt_s <= self._min_rtt_s or expired:
            self._min_rtt_s = rtt_s
            self._min_rtt_at = now

    def on_delivered(self, delivered: int, sent: int, now: float) -> None:
        started = self._round
        if started is None:
            self._round = (sent, delivered, now)
            return
        end, delivered_before, since = started
        if delivered < end or delivered <= delivered_before or now <= since:
            return
        rate = (delivered - delivered_before) / (now - since)
        self._round = (sent, delivered, now)
        app_limited, self._app_limited = self._app_limited, False
        if not app_limited or rate >= self.bandwidth:  # else the application's rate
            self._rates.append(rate)
        self._next_pacing_round()
        if not self._after_timeout:
            self.cwnd = self._window()

    def on_app_limited(self) -> None:
        self._app_limited = True

    def _next_pacing_round(self) -> None:
        """A round ended: the next probing gain, or whether the pipe is full now."""
        if self._probe_round is not None:
            self._probe_round = (self._probe_round + 1) % len(PROBE_PACING_GAINS)
            return
        if self.bandwidth >= FULL_PIPE_GROWTH * self._full_bandwidth:
            self._full_bandwidth = self.bandwidth
            self._rounds_without_growth = 0
            return
        self._rounds_without_growth += 1
        if self._rounds_without_growth >= FULL_PIPE_ROUNDS:
            self._probe_round = PROBE_DRAIN_ROUND  # start-up queued some: drain it first

    def _window(self) -> int:
        """The model's window: CWND_GAIN bandwidth-delay products, never below the
        initial window."""
        floor = initial_window(self.mss)
        if self._min_rtt_s is None:
            return floor
        return max(int(CWND_GAIN * self.bandwidth * self._min_rtt_s), floor)
