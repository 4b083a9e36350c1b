"""The sending half of one TCP connection, sans-IO: the send buffer (capped) and our
sequence space (SND.UNA, SND.NXT, the highest sent, our FIN), the peer's window
(SND.WND, WL1/WL2, its scale), the retransmission timer with RFC 6298's estimator and
Karn's rule (rto.py), the congestion controller (congestion.py: NewReno or the
delivery-rate model, fed the round trips, the bytes delivered and whether all that was
queued went out with the window unfilled) with fast retransmit, NewReno's partial ACKs
and SACK-based recovery over the scoreboard (scoreboard.py, RFC 6675's pipe), pacing at
the controller's rate (pacing.py: what it holds back waits for `pace_at`), the sender's
silly-window avoidance and the persist probe; what `transmit_stream` sends (with
`large_segments`, runs of full segments as one, no longer than pacing allows) and what an
ACK does to all of it (RFC 9293 3.10.7.4's fifth step).

The connection (tcp_connection.py) owns the state machine and builds the segments: this
side calls `emit` with a sequence number, flags and payload, and tells the connection
what an ACK meant (`AckResult`). Sequence numbers are offsets from our initial sequence
number (our SYN is 0, our first data byte 1).
"""

import itertools
from enum import Enum
from typing import Final, Protocol

from pilotif.netstack.config import StackConfig
from pilotif.netstack.congestion import Controller, new_controller
from pilotif.netstack.pacing import Pacer
from pilotif.netstack.rto import RtoEstimator
from pilotif.netstack.scoreboard import Scoreboard
from pilotif.netstack.segment import Segment, unwrap
from pilotif.netstack.tcp_receiver import Receiver
from pilotif.packet.ip import IPV4_MIN_HEADER_BYTES, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN
from pilotif.packet.segments import MAX_GSO_SEGMENTS

DUPLICATE_ACK_THRESHOLD: Final = 3
"""Duplicate ACKs that start a fast retransmit (RFC 5681)."""
LOST_RETRANSMISSION_RTTS: Final = 1.5
"""Round trips after which a retransmission that ACKs still coming did not acknowledge
counts as lost again (RACK's reordering allowance on top of one round trip)."""

TCP_MAX_HEADER_BYTES: Final = 60
_MAX_IP_PACKET_BYTES: Final = 0xFFFF
LARGE_SEGMENT_MAX_PAYLOAD_BYTES: Final = (
    _MAX_IP_PACKET_BYTES - IPV4_MIN_HEADER_BYTES - TCP_MAX_HEADER_BYTES
)
"""The most payload of one large segment: its IP packet's length must fit 16 bits."""
LARGE_SEGMENT_BURST_S: Final = 0.001
"""A large segment carries what the window sends in this long (Linux's TSO autosizing:
its segments leave back to back; a slow path is not handed 64 KiB at once)."""


class Emit(Protocol):
    """Send a segment: (sequence offset, flags, payload); with `segment_payload`, a large
    segment that stands for segments of that many payload bytes each (the last may carry
    fewer)."""

    def __call__(
        self, seq: int, flags: int, payload: bytes | memoryview, *, segment_payload: int = 0
    ) -> None: ...


class AckResult(Enum):
    """What an ACK meant to the sending side."""

    UNSENT = "unsent"
    """It acknowledges what we never sent: drop the segment, send an ACK."""
    TOO_OLD = "too_old"
    """Older than the largest window we were given: drop the segment, challenge."""
    NEW = "new"
    """New data (or our SYN or FIN) acknowledged."""
    MORE_TO_SEND = "more_to_send"
    """A duplicate ACK or a wider window: transmit may send more."""
    NOTHING = "nothing"


class Sender:
    """What we send to the peer, and what it acknowledged."""

    def __init__(
        self, config: StackConfig, receiver: Receiver, emit: Emit, iss: int, mss: int
    ) -> None:
        self._config = config
        self._receiver = receiver
        """The receiving half: the SACK blocks it adds take room from our payload."""
        self._emit = emit
        self.iss = iss
        self.mss = mss
        """Payload bytes of our segments: the path's, and no more than the peer takes."""
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_max = 0
        self.buffer = bytearray()
        self._buf_start = 1
        """The offset of the send buffer's first byte."""
        self._acked_bytes = 0
        """Bytes at the buffer's start the peer acknowledged, cut off in bulk (cutting the
        front of a bytearray makes its next growth copy everything)."""
        self.fin_at: int | None = None
        """Offset of our FIN once the application closed."""
        self._snd_wnd = 0
        self._max_snd_wnd = 0
        self._wl1 = 0
        self._wl2 = 0
        self._shift = 0
        self.sack = False
        """Whether the peer sends SACK blocks (both sides permitted SACK)."""
        self._want_writable = False
        self._scoreboard = Scoreboard(config.max_sack_ranges)
        self._dupacks = 0
        self._in_recovery = False
        self._recover = 0
        self._rexmit_high = 0
        self._rexmitted: dict[int, float] = {}
        """In SACK recovery, the offset of each segment retransmitted and when, oldest
        first."""
        self._lost_again: set[int] = set()
        """Retransmitted segments found lost too, to send again first."""
        self.rto = RtoEstimator(config.initial_rto_s, config.min_rto_s, config.max_rto_s)
        self.rto_at: float | None = None
        """When the retransmission (or persist) timer expires (None: not armed)."""
        self.retries = 0
        """Expiries of the timer in a row, without progress."""
        self._timed: tuple[int, float] | None = None
        """(offset, time sent) of the one segment being timed (Karn: sent once)."""
        self.cc: Controller = new_controller(config.congestion, mss)
        self._pacer = Pacer()
        self.retransmissions = 0
        """Segments sent again (after a timeout, fast retransmit or SACK holes)."""
        self.timeouts = 0
        """Retransmission timer expiries (persist probes included)."""

    def start(self, segment: Segment, mss: int, shift: int, sack: bool) -> None:
        """The peer's SYN arrived: its MSS, window, window scale and SACK as agreed."""
        self.mss = mss
        self.cc = new_controller(self._config.congestion, mss)
        self._shift = shift
        self.sack = sack
        self._snd_wnd = self._max_snd_wnd = segment.window
        self._wl1, self._wl2 = 0, 0

    # -- the application's data ---------------------------------------------------------
    def queue(self, data: bytes | bytearray | memoryview) -> int:
        """Take what fits in the send buffer; returns how many bytes."""
        room = self._config.send_buffer_bytes - self.buffered_bytes
        taken = max(0, min(len(data), room))
        if taken < len(data):
            self._want_writable = True
        if taken:
            self.buffer += data[:taken]
        return taken

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return len(self.buffer) - self._acked_bytes

    def discard(self) -> None:
        """Forget the queued data (the connection ended)."""
        self._buf_start += self._acked_bytes
        self.buffer.clear()
        self._acked_bytes = 0

    def queue_fin(self) -> None:
        """Our FIN follows the data queued so far."""
        self.fin_at = self._buf_start + len(self.buffer)

    def _unsent_bytes(self) -> int:
        """Queued data not sent yet."""
        return self._buf_start + len(self.buffer) - self.snd_nxt

    def writable_again(self) -> bool:
        """Whether the application, once refused, may now queue more (told once)."""
        if self._want_writable and self.buffered_bytes < self._config.send_buffer_bytes:
            self._want_writable = False
            return True
        return False

    # -- timers ---------------------------------------------------------------------
    def arm_rto(self, now: float) -> None:
        """The retransmission timer runs from `now`."""
        self.rto_at = now + self.rto.rto_s

    def arm_if_waiting(self, now: float) -> None:
        """Arm the timer if it is not running and something waits for it: data in
        flight, or data held back by a zero window (the persist timer)."""
        if self.rto_at is not None:
            return
        if self.snd_max > self.snd_una or (self._snd_wnd == 0 and self._unsent_bytes() > 0):
            self.arm_rto(now)

    def expire(self) -> int:
        """The timer expired: counted and backed off; returns the expiries in a row."""
        self.timeouts += 1
        self.retries += 1
        self.rto.back_off()
        return self.retries

    def on_timeout(self, now: float) -> bool:
        """What an expiry does to the data (the handshake is the connection's): the
        persist probe, or everything in flight that the peer did not SACK again from
        SND.UNA after the controller's loss window; returns whether transmit has
        something to send."""
        if self.snd_max == self.snd_una and self._snd_wnd == 0 and self._unsent_bytes() > 0:
            self._send_data(self.snd_nxt, 1, now)  # the persist timer's probe
            self.snd_nxt += 1
            self.snd_max = max(self.snd_max, self.snd_nxt)
            self.arm_rto(now)
            return False
        if self.snd_max == self.snd_una:
            return False
        if self._snd_wnd == 0:
            self._send_data(self.snd_una, 1, now)  # the probe again, backed off
            self.arm_rto(now)
            return False
        self.cc.on_timeout(self.snd_max - self.snd_una)
        if self.retries > 1:
            self._scoreboard.clear()  # the peer may have reneged (RFC 2018 section 8)
        self._leave_recovery()
        self._dupacks = 0
        self.snd_nxt = self.snd_una
        self.arm_rto(now)
        return True

    # -- output -----------------------------------------------------------------------
    def syn_sent(self, now: float) -> None:
        """Our SYN (sequence number 0) went out: timed unless it is a retransmission."""
        self.snd_nxt = max(self.snd_nxt, 1)
        self.snd_max = max(self.snd_max, 1)
        self._timed = None if self.retries else (0, now)

    def _payload_limit(self) -> int:
        """The most payload a segment can carry now: the MSS less the SACK option it will
        carry."""
        receiver = self._receiver
        if not receiver.sack or not len(receiver.ooo):
            return self.mss
        return self.mss - receiver.sack_option_bytes()

    @property
    def pace_at(self) -> float | None:
        """When data that pacing held back may go (None: none is held back)."""
        return self._pacer.release_at

    @pace_at.setter
    def pace_at(self, at: float | None) -> None:
        self._pacer.release_at = at

    def _paced(self, wanted: int, now: float) -> int:
        """How many of `wanted` bytes pacing lets go now (0: held back until `pace_at`)."""
        return self._pacer.allowance(wanted, self._payload_limit(), self.cc.pacing_rate, now)

    def _send_data(self, start: int, length: int, now: float, *, large: bool = False) -> int:
        """Send [start, start+length) of the stream (a FIN too when it ends there), in one
        segment, or `large`, in one large segment of up to MAX_GSO_SEGMENTS full ones;
        returns the sequence space used."""
        offset = start - self._buf_start
        limit = self._payload_limit()
        if large:
            segments = min(self._large_segment_bytes() // limit, MAX_GSO_SEGMENTS)
            length = min(length, max(segments, 2) * limit)
        else:
            length = min(length, limit)
        payload = memoryview(self.buffer)[offset : offset + length]
        end = start + len(payload)
        flags = TCP_ACK
        if end == self._buf_start + len(self.buffer):
            flags |= TCP_PSH
        used = len(payload)
        if self.fin_at is not None and end == self.fin_at:
            flags |= TCP_FIN
            used += 1
        if start < self.snd_max:
            self.retransmissions += 1
            if self._timed is not None and self._timed[0] >= start:
                self._timed = None  # Karn: an ACK for it would be ambiguous
        elif self._timed is None:
            self._timed = (start, now)
        self._emit(start, flags, payload, segment_payload=limit if len(payload) > limit else 0)
        self._pacer.spend(len(payload))
        return used

    def _app_limited(self, cwnd: int) -> bool:
        """All that was queued went out: whether the application (not the window, not our
        send buffer's cap) is what keeps the window unfilled."""
        return 2 * self.buffered_bytes < self._config.send_buffer_bytes and self._pipe() < cwnd

    def _large_segment_bytes(self) -> int:
        """The most payload of one large segment: what the window sends in
        LARGE_SEGMENT_BURST_S at its rate (cwnd / srtt, as Linux sizes TSO), no more than
        an IP packet holds."""
        srtt_s = self.rto.srtt_s
        if not srtt_s:
            return LARGE_SEGMENT_MAX_PAYLOAD_BYTES
        burst = int(self.cc.cwnd * LARGE_SEGMENT_BURST_S / srtt_s)
        return min(burst, LARGE_SEGMENT_MAX_PAYLOAD_BYTES)

    def _pipe(self) -> int:
        flight = self.snd_nxt - self.snd_una
        if self.snd_nxt < self.snd_max:  # going back after a timeout
            return flight - self._scoreboard.sacked_below(self.snd_nxt)
        if self.sack:
            lost = 0
            if self._in_recovery:
                for left, right in self._scoreboard.holes(self.snd_una):
                    if right > self._rexmit_high:
                        lost += right - max(left, self._rexmit_high)
                lost += len(self._lost_again) * self.mss
            return max(flight - self._scoreboard.sacked_bytes - lost, 0)
        return max(flight - min(self._dupacks, DUPLICATE_ACK_THRESHOLD) * self.mss, 0)

    def transmit_stream(self, now: float) -> None:
        """Send what the windows allow: SACK holes first in recovery, then new data (with
        `large_segments`, as much as the windows allow in one large segment) and our
        FIN; no faster than pacing allows."""
        cwnd = self.cc.cwnd
        self._pacer.release_at = None
        if self._in_recovery and self.sack:
            if not self._send_lost_again(cwnd, now):
                return
            for left, right in self._scoreboard.holes(self.snd_una):
                start = max(left, self._rexmit_high)
                while start < right and self._pipe() < cwnd:
                    if not self._paced(min(right - start, self._payload_limit()), now):
                        return
                    used = self._send_data(start, right - start, now)
                    if not used:
                        break
                    self._rexmitted[start] = now
                    start += used
                    self._rexmit_high = start
        data_end = self._buf_start + len(self.buffer)
        while self.snd_nxt < data_end:
            end = data_end
            if self.snd_nxt < self.snd_max:  # going back after a timeout: the unSACKed
                self.snd_nxt, end = self._scoreboard.lacking(self.snd_nxt, data_end)
                if self.snd_nxt >= data_end:
                    break
            window_end = self.snd_una + self._snd_wnd
            pipe = self._pipe()
            room = min(window_end - self.snd_nxt, cwnd - pipe)
            limit = self._payload_limit()
            unsent = end - self.snd_nxt
            length = min(limit, unsent, room)
            if length <= 0:
                return
            if length < limit and length < unsent and pipe > 0:
                return  # no small segment while more waits and some is in flight
            large = self._config.large_segments and min(room, unsent) >= 2 * limit
            if large:
                length = min(room, unsent)
                if length < unsent:
                    length -= length % limit  # whole segments, unless it ends the data
            length = self._paced(length, now)
            if length <= 0:
                return
            large = large and length > limit
            used = self._send_data(self.snd_nxt, length, now, large=large)
            self.snd_nxt += used
            self.snd_max = max(self.snd_max, self.snd_nxt)
        if self.fin_at is not None and self.snd_nxt == self.fin_at:
            self._send_data(self.snd_nxt, 0, now)
            self.snd_nxt += 1
            self.snd_max = max(self.snd_max, self.snd_nxt)
        if self.snd_nxt == self.snd_max >= data_end and self._app_limited(cwnd):
            self.cc.on_app_limited()

    # -- input ------------------------------------------------------------------------
    def unwrap_ack(self, wire_ack: int, near: int) -> int:
        """A segment's acknowledgement number as an offset, the one nearest to `near`."""
        return unwrap(wire_ack, self.iss, near)

    def syn_acked(self, now: float) -> None:
        """The peer acknowledged our SYN."""
        self.snd_una = 1
        self.retries = 0
        self.rto_at = None
        self._sample_rtt(1, now)

    def update_window(self, segment: Segment, seq: int, ack: int) -> None:
        """Take the segment's window if it is newer than the last (SND.WL1/WL2)."""
        if self._wl1 < seq or (self._wl1 == seq and self._wl2 <= ack):
            shift = 0 if segment.flags & TCP_SYN else self._shift
            self._snd_wnd = segment.window << shift
            self._max_snd_wnd = max(self._max_snd_wnd, self._snd_wnd)
            self._wl1, self._wl2 = seq, ack

    def _sample_rtt(self, acked_to: int, now: float) -> None:
        if self._timed is not None and acked_to > self._timed[0]:
            rtt_s = now - self._timed[1]
            self.rto.sample(rtt_s)
            self.cc.on_rtt(rtt_s, now)
            self._timed = None

    def on_ack(self, segment: Segment, seq: int, now: float) -> AckResult:
        """The ACK of a synchronized segment at offset `seq` (of the peer's space)."""
        ack = unwrap(segment.ack, self.iss, self.snd_una)
        if ack > self.snd_max:
            return AckResult.UNSENT
        if ack < self.snd_una - self._max_snd_wnd:
            return AckResult.TOO_OLD
        old_window = self._snd_wnd
        self.update_window(segment, seq, ack)
        if self.sack and segment.sack_blocks:
            for left, right in segment.sack_blocks:
                start = unwrap(left, self.iss, self.snd_una)
                end = unwrap(right, self.iss, self.snd_una)
                self._scoreboard.add(start, end, self.snd_una, self.snd_max)
        if self._snd_wnd == 0:
            self.retries = 0  # a live peer answers our probes
        self._detect_lost_retransmissions(now)
        if ack > self.snd_una:
            self.take_new_ack(ack, now)
            return AckResult.NEW
        if segment.sack_blocks:
            self.cc.on_delivered(ack + self._scoreboard.sacked_bytes, self.snd_max, now)
        if (
            ack == self.snd_una
            and self.snd_max > self.snd_una
            and not segment.payload
            and not segment.flags & TCP_FIN
            and (self._snd_wnd == old_window or segment.sack_blocks)
        ):
            self._on_duplicate_ack(now)
            return AckResult.MORE_TO_SEND
        if self._snd_wnd > old_window:
            return AckResult.MORE_TO_SEND
        return AckResult.NOTHING

    def predicted_ack(self, segment: Segment) -> int | None:
        """The ACK of a segment that is the predicted case (header prediction): nothing
        being recovered or retransmitted, the peer's window open, and an ACK beyond
        SND.UNA (not beyond SND.MAX) or one at SND.UNA with the window as before; else
        None (the general path, `on_ack`)."""
        window = segment.window << self._shift
        if self._in_recovery or self._rexmitted or self._lost_again or not window:
            return None
        ack = unwrap(segment.ack, self.iss, self.snd_una)
        if self.snd_una < ack <= self.snd_max or (ack == self.snd_una and window == self._snd_wnd):
            return ack
        return None

    def take_new_ack(self, ack: int, now: float) -> None:
        """An ACK beyond SND.UNA (not beyond SND.MAX): the data it covers is delivered."""
        self._on_new_ack(ack, now)
        self.cc.on_delivered(ack + self._scoreboard.sacked_bytes, self.snd_max, now)

    def lost_check_at(self) -> float | None:
        """When the oldest retransmission in recovery counts as lost unless acknowledged
        or SACKed by then (None: none waits)."""
        wait_s = self._lost_wait_s()
        if wait_s is None:
            return None
        return next(iter(self._rexmitted.values())) + wait_s

    def _lost_wait_s(self) -> float | None:
        """How long a retransmission in recovery waits for an ACK or SACK before it counts
        as lost (None: none waits, no round trip is known yet, or a zero window holds
        them back: the persist timer's)."""
        srtt_s = self.rto.srtt_s
        if not self._rexmitted or not srtt_s or not self._snd_wnd:
            return None
        return LOST_RETRANSMISSION_RTTS * srtt_s

    def _detect_lost_retransmissions(self, now: float) -> None:
        """In SACK recovery, a retransmission that nothing acknowledged or SACKed
        LOST_RETRANSMISSION_RTTS round trips after it went (checked at each ACK and at
        `lost_check_at`) was lost too, and goes again first rather than after the
        retransmission timer (RACK's idea, RFC 8985, for retransmissions)."""
        wait_s = self._lost_wait_s()
        if wait_s is None:
            return
        aged = list(
            itertools.takewhile(lambda item: item[1] + wait_s <= now, self._rexmitted.items())
        )
        for offset, _ in aged:
            del self._rexmitted[offset]
            if offset >= self.snd_una and not self._scoreboard.holds(offset):
                self._lost_again.add(offset)

    def on_lost_check(self, now: float) -> None:
        """`lost_check_at` came."""
        self._detect_lost_retransmissions(now)

    def _send_lost_again(self, cwnd: int, now: float) -> bool:
        """Send the retransmissions found lost again (the part the peer still lacks);
        False when pacing held one back."""
        for offset in sorted(self._lost_again):
            if self._pipe() >= cwnd:
                return True
            if not self._paced(self._payload_limit(), now):
                return False
            self._lost_again.discard(offset)
            start, end = self._scoreboard.lacking(max(offset, self.snd_una), self.snd_max)
            if start == max(offset, self.snd_una) and start < end:
                self._send_data(start, end - start, now)
                self._rexmitted[start] = now
        return True

    def _leave_recovery(self) -> None:
        self._in_recovery = False
        self._rexmitted.clear()
        self._lost_again.clear()

    def _on_new_ack(self, ack: int, now: float) -> None:
        acked = ack - self.snd_una
        self._sample_rtt(ack, now)
        data_end = self._buf_start + len(self.buffer)
        freed_to = min(ack, data_end)
        if freed_to > self._buf_start + self._acked_bytes:
            self._acked_bytes = freed_to - self._buf_start
            if 2 * self._acked_bytes >= len(self.buffer):  # cut when half is dead
                del self.buffer[: self._acked_bytes]
                self._buf_start = freed_to
                self._acked_bytes = 0
        self.snd_una = ack
        self.snd_nxt = max(self.snd_nxt, ack)
        self._scoreboard.advance(ack)
        self.retries = 0
        if self._in_recovery:
            if ack >= self._recover:
                self._leave_recovery()
                self.cc.on_recovery_end()
            else:
                self._rexmit_high = max(self._rexmit_high, ack)
                if not self.sack:  # NewReno's partial ACK: the next hole, at once
                    self._send_data(ack, data_end - ack, now)
        else:
            self.cc.on_ack(acked)
        self._dupacks = 0
        self.rto_at = None
        if self.snd_max > self.snd_una:
            self.arm_rto(now)

    def _on_duplicate_ack(self, now: float) -> None:
        self._dupacks += 1
        sacked_enough = (
            self.sack and self._scoreboard.sacked_bytes >= (DUPLICATE_ACK_THRESHOLD - 1) * self.mss
        )
        going_back = self.snd_nxt < self.snd_max  # after a timeout: that is the repair
        if (
            not self._in_recovery
            and not going_back
            and (self._dupacks >= DUPLICATE_ACK_THRESHOLD or sacked_enough)
        ):
            self._in_recovery = True
            self._recover = self.snd_max
            self.cc.on_loss(self.snd_max - self.snd_una)
            data_end = self._buf_start + len(self.buffer)
            used = self._send_data(self.snd_una, data_end - self.snd_una, now)
            self._rexmit_high = self.snd_una + max(used, 1)
            self._rexmitted[self.snd_una] = now
