"""One TCP connection, sans-IO: RFC 9293 segment processing (3.10.7) driving the state
table of tcp_state.py, the send and receive buffers (capped), RFC 6298 retransmission
with Karn's rule (rto.py), NewReno (congestion.py) with fast retransmit and SACK-based
recovery (scoreboard.py), window scaling, the persist timer, keepalives, RFC 5961's
checks and TIME-WAIT.

Three inputs, as every core of pilotif: the application's calls (send, receive, close,
abort: they only change buffers and ask to be polled), segments (`on_segment`), and the
clock (`transmit` and `on_timer` take `now`). Output goes to the host (the stack):
packets, events, and the wish to be polled. Sequence numbers are kept unwrapped inside
(offsets from the initial sequence numbers: our SYN is 0, our first data byte 1), and
wrapped only on the wire.
"""

from typing import Final, Protocol

from pilotif.netstack.config import MAX_WINDOW_SCALE, StackConfig
from pilotif.netstack.congestion import NewReno
from pilotif.netstack.events import Closed, Connected, Event, Readable, Writable
from pilotif.netstack.reassembly import OutOfOrder
from pilotif.netstack.rto import RtoEstimator
from pilotif.netstack.scoreboard import Scoreboard
from pilotif.netstack.segment import (
    MAX_SACK_BLOCKS,
    TCP_RST,
    Segment,
    build_segment,
    sack_option,
    sack_option_bytes,
    syn_options,
)
from pilotif.netstack.tcp_state import (
    QUEUEING_STATES,
    RECEIVING_STATES,
    Action,
    LocalProtocolError,
    State,
)
from pilotif.netstack.tcp_state import Event as Ev
from pilotif.netstack.tcp_state import transition as table_transition
from pilotif.packet.ip import IPV6_ADDRESS_BYTES, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN

SEQ_SPACE: Final = 2**32
_HALF_SPACE: Final = 2**31
MAX_WINDOW_FIELD: Final = 0xFFFF
DEFAULT_MSS_IPV4: Final = 536
"""The MSS to assume when a SYN names none (RFC 9293 3.7.1)."""
DEFAULT_MSS_IPV6: Final = 1220
MIN_MSS_BYTES: Final = 64
"""The least MSS a peer can make us use (Linux's floor is 48): a SYN that names less gets
this, so that every segment still carries data next to its options."""
DUPLICATE_ACK_THRESHOLD: Final = 3
"""Duplicate ACKs that start a fast retransmit (RFC 5681)."""
ACK_EVERY_SEGMENTS: Final = 2
"""A receiver ACKs at least every second full segment (RFC 9293 3.8.6.3)."""
_FIN_STATES: Final = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK}
)
"""States whose data and FIN may still be unacknowledged: transmit serves them."""


def unwrap(wire: int, base: int, near: int) -> int:
    """The offset from wire sequence number `base` of `wire`, taken as the one nearest
    to the offset `near`."""
    diff = (wire - base - near) % SEQ_SPACE
    return near + (diff - SEQ_SPACE if diff >= _HALF_SPACE else diff)


class ConnectionHost(Protocol):
    """What a connection needs from its stack."""

    def emit(self, packet: bytes) -> None:
        """Send one IP packet."""
        ...

    def report(self, event: Event) -> None:
        """Tell the application."""
        ...

    def wake(self, connection: "Connection") -> None:
        """Poll this connection soon (it has something to send)."""
        ...

    def forget(self, connection: "Connection") -> None:
        """The connection reached CLOSED."""
        ...

    def time_wait(self, connection: "Connection") -> None:
        """The connection entered (or restarted) TIME-WAIT."""
        ...

    def established(self, connection: "Connection") -> None:
        """The handshake completed."""
        ...

    def allow_challenge(self) -> bool:
        """Whether the node's budget of challenge ACKs lets one more go now."""
        ...

    def count(self, reason: str) -> None:
        """Count a dropped segment or a notable reaction by its reason."""
        ...


class Connection:
    """A TCP connection; made by Stack.connect or a listener, never directly."""

    def __init__(
        self,
        host: ConnectionHost,
        config: StackConfig,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        iss: int,
    ) -> None:
        self._host = host
        self._config = config
        self.local = local
        """Our (address, port)."""
        self.remote = remote
        """The peer's (address, port)."""
        self.state = State.CLOSED
        self.listener_port: int | None = None
        """The listener that made this connection (passive open), else None."""
        ipv6 = len(local[0]) == IPV6_ADDRESS_BYTES
        self._local_mss = config.mss_bytes(ipv6)
        self.mss = min(self._local_mss, DEFAULT_MSS_IPV6 if ipv6 else DEFAULT_MSS_IPV4)
        """Payload bytes of our segments: the path's, and no more than the peer takes."""
        self._iss = iss
        self._irs = 0
        # send side (offsets from iss)
        self._snd_una = 0
        self._snd_nxt = 0
        self._snd_max = 0
        self._send_buf = bytearray()
        self._buf_start = 1
        self._fin_at: int | None = None
        """Offset of our FIN once the application closed."""
        self._snd_wnd = 0
        self._max_snd_wnd = 0
        self._wl1 = 0
        self._wl2 = 0
        self._snd_shift = 0
        self._scaling = False
        self._want_writable = False
        self._now = 0.0
        """The time of the call being served (every entry point sets it)."""
        # receive side (offsets from irs)
        self._rcv_nxt = 0
        self._rcv_shift = 0
        self._rcv_adv = 0
        """Right edge of the window we advertised (never moved left)."""
        self._recv_buf = bytearray()
        self._ooo = OutOfOrder(config.max_out_of_order_segments)
        self._peer_fin_at: int | None = None
        self.peer_closed = False
        """The peer's FIN arrived: after the buffered data, nothing more comes."""
        self._readable_told = False
        self._unacked_segments = 0
        self._ack_now = False
        # loss recovery and timers
        self._sack = False
        self._scoreboard = Scoreboard(config.max_sack_ranges)
        self._dupacks = 0
        self._in_recovery = False
        self._recover = 0
        self._rexmit_high = 0
        self.rto = RtoEstimator(config.initial_rto_s, config.min_rto_s, config.max_rto_s)
        self._timed: tuple[int, float] | None = None
        """(offset, time sent) of the one segment being timed (Karn: sent once)."""
        self.cc = NewReno(self.mss)
        self._retries = 0
        self._rto_at: float | None = None
        self._ack_at: float | None = None
        self._keepalive_at: float | None = None
        self._keepalive_probes = 0
        self._time_wait_at: float | None = None
        self.retransmissions = 0
        """Segments sent again (after a timeout, fast retransmit or SACK holes)."""
        self.timeouts = 0
        """Retransmission timer expiries (persist probes included)."""

    # -- the application's side -------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue data; returns how many bytes were taken (the send buffer is capped; a
        Writable event follows when there is room again)."""
        if self.state not in QUEUEING_STATES or self._fin_at is not None:
            raise LocalProtocolError(f"cannot send in {self.state.value}")
        room = self._config.send_buffer_bytes - len(self._send_buf)
        taken = max(0, min(len(data), room))
        if taken < len(data):
            self._want_writable = True
        if taken:
            self._send_buf += data[:taken]
            self._host.wake(self)
        return taken

    def receive(self, max_bytes: int | None = None) -> bytes:
        """Data received in order (b"" when none waits; see peer_closed for the end)."""
        count = len(self._recv_buf) if max_bytes is None else max_bytes
        data = bytes(self._recv_buf[:count])
        del self._recv_buf[:count]
        if not self._recv_buf:
            self._readable_told = False
        if data and self.state in RECEIVING_STATES:
            free_edge = self._rcv_nxt + self._config.receive_buffer_bytes - len(self._recv_buf)
            opened = free_edge - self._rcv_adv
            if opened >= min(self._config.receive_buffer_bytes // 2, 2 * self.mss):
                self._ack_now = True
                self._host.wake(self)
        return data

    @property
    def readable_bytes(self) -> int:
        """Bytes waiting to be read."""
        return len(self._recv_buf)

    @property
    def bytes_in_flight(self) -> int:
        """Sequence space sent and not yet acknowledged."""
        return self._snd_max - self._snd_una

    @property
    def send_buffered_bytes(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return len(self._send_buf)

    def close(self) -> None:
        """No more data from us: a FIN follows the queued data (calling it again, or
        after the connection ended, does nothing)."""
        if self._fin_at is not None or self.state in (State.CLOSED, State.TIME_WAIT):
            return
        self._apply(Ev.CLOSE, reason="closed")

    def abort(self) -> None:
        """Reset the connection now; queued data is thrown away."""
        if self.state is State.CLOSED:
            return
        self._apply(Ev.ABORT, reason="aborted")

    # -- opening ----------------------------------------------------------------------
    def open(self, now: float) -> None:
        """Active open: send our SYN."""
        self._now = now
        self._apply(Ev.CONNECT, reason="")
        self._arm_rto(now)

    def accept_syn(self, segment: Segment, now: float) -> None:
        """Passive open from a listener: take the peer's SYN, answer SYN-ACK."""
        self._now = now
        self._take_syn(segment)
        self._apply(Ev.SYN, reason="")
        self._arm_rto(now)
        self._touch(now)

    def _take_syn(self, segment: Segment) -> None:
        self._irs = segment.seq
        self._rcv_nxt = 1
        if segment.mss is not None:
            self.mss = max(min(self._local_mss, segment.mss), MIN_MSS_BYTES)
        else:
            self.mss = min(self._local_mss, self.mss)
        self.cc = NewReno(self.mss)
        self._scaling = segment.window_scale is not None and self._config.window_scale
        if segment.window_scale is not None and self._scaling:
            self._snd_shift = min(segment.window_scale, MAX_WINDOW_SCALE)
            self._rcv_shift = self._config.receive_window_shift()
        else:
            self._snd_shift = self._rcv_shift = 0
        self._sack = segment.sack_permitted and self._config.sack
        self._snd_wnd = self._max_snd_wnd = segment.window
        self._wl1, self._wl2 = 0, 0

    # -- transitions ------------------------------------------------------------------
    def _apply(self, event: Ev, reason: str) -> None:
        row = table_transition(self.state, event)
        if row is None:
            if event in (Ev.CLOSE, Ev.ABORT, Ev.CONNECT):
                raise LocalProtocolError(f"{event.value} in {self.state.value}")
            return
        self.state = row.next_state
        action = row.action
        if action is Action.SEND_SYN:
            self._send_syn(ack=False)
        elif action is Action.SEND_SYN_ACK:
            self._send_syn(ack=True)
        elif action is Action.SEND_ACK:
            self._ack_now = True
            self._host.wake(self)
        elif action is Action.SEND_FIN:
            self._fin_at = self._buf_start + len(self._send_buf)
            self._host.wake(self)
        elif action is Action.CONNECTED:
            self._ack_now = True
            self._host.wake(self)
            self._host.established(self)
            self._host.report(Connected(self))
            if self._fin_at is not None:
                self._apply(Ev.CLOSE, reason="closed")
        elif action is Action.START_TIME_WAIT:
            self._ack_now = True
            self._host.wake(self)
            self._rto_at = self._keepalive_at = None
            self._time_wait_at = self._now + self._config.time_wait_s
            self._send_buf.clear()
            self._host.time_wait(self)
        elif action is Action.SEND_RST:
            self._send_rst()
            self._delete(reason)
        elif action is Action.DELETE:
            self._delete(reason)

    def _delete(self, reason: str) -> None:
        self.state = State.CLOSED
        self._rto_at = self._ack_at = self._keepalive_at = self._time_wait_at = None
        self._send_buf.clear()
        self._host.forget(self)
        self._host.report(Closed(self, reason))

    def end_time_wait(self) -> None:
        """Leave TIME-WAIT now (the node has too many, or a new SYN takes the 4-tuple)."""
        if self.state is State.TIME_WAIT:
            self._apply(Ev.TIMEOUT, reason="closed")

    def takes_new_syn(self, segment: Segment) -> bool:
        """Whether a SYN may open a new connection over this one in TIME-WAIT: its sequence
        number is beyond what this one received (RFC 9293 3.10.7.4, RFC 6191)."""
        return (
            self.state is State.TIME_WAIT
            and segment.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
            and unwrap(segment.seq, self._irs, self._rcv_nxt) > self._rcv_nxt
        )

    # -- timers -----------------------------------------------------------------------
    def deadline(self) -> float | None:
        """When on_timer must next run."""
        times = [
            t
            for t in (self._rto_at, self._ack_at, self._keepalive_at, self._time_wait_at)
            if t is not None
        ]
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        """Run what is due."""
        self._now = now
        if self._time_wait_at is not None and now >= self._time_wait_at:
            self._time_wait_at = None
            self._apply(Ev.TIMEOUT, reason="closed")
            return
        if self._ack_at is not None and now >= self._ack_at:
            self._ack_at = None
            self._ack_now = True
        if self._rto_at is not None and now >= self._rto_at:
            self._rto_at = None
            self._on_rto(now)
            if self.state is State.CLOSED:
                return
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._on_keepalive(now)

    def _arm_rto(self, now: float) -> None:
        self._rto_at = now + self.rto.rto_s

    def _touch(self, now: float) -> None:
        """The peer was heard from: keepalives start over."""
        self._keepalive_probes = 0
        idle = self._config.keepalive_idle_s
        if idle is not None and self.state not in (State.TIME_WAIT, State.CLOSED):
            self._keepalive_at = now + idle

    def _on_rto(self, now: float) -> None:
        self.timeouts += 1
        self._retries += 1
        self.rto.back_off()
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            if self._retries > self._config.syn_retries:
                self._apply(Ev.TIMEOUT, reason="timeout")
                return
            self._send_syn(ack=self.state is State.SYN_RECEIVED)
            self._arm_rto(now)
            return
        if self._retries > self._config.max_retransmissions:
            self._apply(Ev.TIMEOUT, reason="timeout")
            return
        unsent = self._buf_start + len(self._send_buf) - self._snd_nxt
        if self._snd_max == self._snd_una and self._snd_wnd == 0 and unsent > 0:
            self._send_data(self._snd_nxt, 1, now)  # the persist timer's probe
            self._snd_nxt += 1
            self._snd_max = max(self._snd_max, self._snd_nxt)
            self._arm_rto(now)
            return
        if self._snd_max == self._snd_una:
            return
        if self._snd_wnd == 0:
            self._send_data(self._snd_una, 1, now)  # the probe again, backed off
            self._arm_rto(now)
            return
        self.cc.on_timeout(self._snd_max - self._snd_una)
        self._scoreboard.clear()
        self._in_recovery = False
        self._dupacks = 0
        self._snd_nxt = self._snd_una
        self._host.wake(self)
        self._arm_rto(now)

    def _on_keepalive(self, now: float) -> None:
        self._keepalive_at = None
        if self.state not in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_2):
            return
        if self._keepalive_probes >= self._config.keepalive_probes:
            self._apply(Ev.TIMEOUT, reason="timeout")
            return
        self._keepalive_probes += 1
        self._emit(self._snd_una - 1, TCP_ACK)
        self._keepalive_at = now + self._config.keepalive_interval_s

    # -- output -----------------------------------------------------------------------
    def _window_field(self, syn: bool) -> int:
        free = self._config.receive_buffer_bytes - len(self._recv_buf)
        if syn:
            self._rcv_adv = self._rcv_nxt + min(free, MAX_WINDOW_FIELD)
            return min(free, MAX_WINDOW_FIELD)
        edge = self._rcv_nxt + free
        if edge - self._rcv_adv < min(self._config.receive_buffer_bytes // 2, self.mss):
            edge = max(self._rcv_adv, self._rcv_nxt)  # no small openings (RFC 9293 3.8.6.2.2)
        field = min((edge - self._rcv_nxt) >> self._rcv_shift, MAX_WINDOW_FIELD)
        self._rcv_adv = max(self._rcv_adv, self._rcv_nxt + (field << self._rcv_shift))
        return field

    def _emit(
        self, seq: int, flags: int, payload: bytes | memoryview = b"", options: bytes = b""
    ) -> None:
        syn = bool(flags & TCP_SYN)
        ack = (self._irs + self._rcv_nxt) % SEQ_SPACE if flags & TCP_ACK else 0
        if flags & TCP_ACK:
            self._ack_now = False
            self._unacked_segments = 0
            self._ack_at = None
            if not syn and self._sack and len(self._ooo):
                options = options + self._sack_blocks()
        packet = build_segment(
            self.local[0],
            self.remote[0],
            (self.local[1], self.remote[1]),
            (self._iss + seq) % SEQ_SPACE,
            ack,
            flags,
            self._window_field(syn),
            options,
            payload,
        )
        self._host.emit(packet)

    def _payload_limit(self) -> int:
        """The most payload a segment can carry now: the MSS less the SACK option it will
        carry (RFC 6691: the MSS leaves the options out)."""
        if not self._sack or not len(self._ooo):
            return self.mss
        return self.mss - sack_option_bytes(min(len(self._ooo), MAX_SACK_BLOCKS))

    def _sack_blocks(self) -> bytes:
        blocks = self._ooo.sack_blocks(MAX_SACK_BLOCKS)
        return sack_option(
            [((self._irs + s) % SEQ_SPACE, (self._irs + e) % SEQ_SPACE) for s, e in blocks]
        )

    def _send_syn(self, ack: bool) -> None:
        shift = self._config.receive_window_shift() if self._config.window_scale else None
        if ack:
            shift = shift if self._scaling else None
            sack = self._sack
        else:
            sack = self._config.sack
        options = syn_options(self._local_mss, shift, sack)
        self._emit(0, TCP_SYN | (TCP_ACK if ack else 0), options=options)
        self._snd_nxt = max(self._snd_nxt, 1)
        self._snd_max = max(self._snd_max, 1)
        self._timed = None if self._retries else (0, self._now)

    def _send_rst(self) -> None:
        self._emit(self._snd_nxt, TCP_RST | TCP_ACK)

    def _send_data(self, start: int, length: int, now: float) -> int:
        """Send [start, start+length) of the stream (a FIN too when it ends there);
        returns the sequence space used."""
        offset = start - self._buf_start
        length = min(length, self._payload_limit())
        payload = memoryview(self._send_buf)[offset : offset + length]
        end = start + len(payload)
        flags = TCP_ACK
        if end == self._buf_start + len(self._send_buf):
            flags |= TCP_PSH
        used = len(payload)
        if self._fin_at is not None and end == self._fin_at:
            flags |= TCP_FIN
            used += 1
        if start < self._snd_max:
            self.retransmissions += 1
            if self._timed is not None and self._timed[0] >= start:
                self._timed = None  # Karn: an ACK for it would be ambiguous
        elif self._timed is None:
            self._timed = (start, now)
        self._emit(start, flags, payload)
        return used

    def transmit(self, now: float) -> None:
        """Send what the windows allow, and the ACK that is due; arm the timers."""
        self._now = now
        if self.state in _FIN_STATES and self._snd_una > 0:
            self._transmit_stream(now)
        if self._ack_now and self.state is not State.CLOSED and self._rcv_nxt > 0:
            self._emit(self._snd_nxt, TCP_ACK)
        elif self._unacked_segments and self._ack_at is None:
            self._ack_at = now + self._config.delayed_ack_s
        if self._snd_max > self._snd_una and self._rto_at is None:
            self._arm_rto(now)
        unsent = self._buf_start + len(self._send_buf) - self._snd_nxt
        if self._snd_wnd == 0 and unsent > 0 and self._rto_at is None:
            self._arm_rto(now)  # the persist timer

    def _pipe(self) -> int:
        flight = self._snd_nxt - self._snd_una
        if self._snd_nxt < self._snd_max:
            return flight  # going back after a timeout
        if self._sack:
            lost = 0
            if self._in_recovery:
                for left, right in self._scoreboard.holes(self._snd_una):
                    if right > self._rexmit_high:
                        lost += right - max(left, self._rexmit_high)
            return max(flight - self._scoreboard.sacked_bytes - lost, 0)
        return max(flight - min(self._dupacks, DUPLICATE_ACK_THRESHOLD) * self.mss, 0)

    def _transmit_stream(self, now: float) -> None:
        cwnd = self.cc.cwnd
        if self._in_recovery and self._sack:
            for left, right in self._scoreboard.holes(self._snd_una):
                start = max(left, self._rexmit_high)
                while start < right and self._pipe() < cwnd:
                    used = self._send_data(start, right - start, now)
                    if not used:
                        break
                    start += used
                    self._rexmit_high = start
        data_end = self._buf_start + len(self._send_buf)
        while self._snd_nxt < data_end:
            window_end = self._snd_una + self._snd_wnd
            room = min(window_end - self._snd_nxt, cwnd - self._pipe())
            limit = self._payload_limit()
            length = min(limit, data_end - self._snd_nxt, room)
            if length <= 0:
                return
            if length < limit and length < data_end - self._snd_nxt and self._pipe() > 0:
                return  # no small segment while more waits and some is in flight
            used = self._send_data(self._snd_nxt, length, now)
            self._snd_nxt += used
            self._snd_max = max(self._snd_max, self._snd_nxt)
        if self._fin_at is not None and self._snd_nxt == self._fin_at:
            self._send_data(self._snd_nxt, 0, now)
            self._snd_nxt += 1
            self._snd_max = max(self._snd_max, self._snd_nxt)

    # -- input ------------------------------------------------------------------------
    def on_segment(self, segment: Segment, now: float) -> None:
        """A segment for this connection (checksums already checked)."""
        self._now = now
        if self.state is State.SYN_SENT:
            self._on_syn_sent(segment, now)
        elif self.state is not State.CLOSED:
            self._on_synchronized(segment, now)

    def _on_syn_sent(self, segment: Segment, now: float) -> None:
        flags = segment.flags
        if flags & TCP_ACK and unwrap(segment.ack, self._iss, 0) != 1:
            if not flags & TCP_RST:
                self._host.count("bad_ack")
                self._emit_reset_for(segment)
            return
        if flags & TCP_RST:
            if flags & TCP_ACK:
                self._apply(Ev.RST, reason="refused")
            return
        if not flags & TCP_SYN:
            return
        self._take_syn(segment)
        self._touch(now)
        if flags & TCP_ACK:
            self._snd_una = 1
            self._update_window(segment, 0, 1)
            self._sample_rtt(1, now)
            self._retries = 0
            self._rto_at = None
            self._apply(Ev.SYN_ACK, reason="")
        else:
            self._apply(Ev.SYN, reason="")
            self._arm_rto(now)

    def _emit_reset_for(self, segment: Segment) -> None:
        """A reset with the sequence number the bad ACK asked for (RFC 9293 3.10.7.3),
        within the node's budget of answers to bad segments."""
        if not self._host.allow_challenge():
            return
        packet = build_segment(
            self.local[0],
            self.remote[0],
            (self.local[1], self.remote[1]),
            segment.ack,
            0,
            TCP_RST,
            0,
        )
        self._host.emit(packet)

    def _challenge(self, reason: str = "challenge_ack") -> None:
        """RFC 5961's challenge ACK (or the ACK an unacceptable segment gets), within the
        node's budget of answers to bad segments; counted by `reason`."""
        self._host.count(reason)
        if self._host.allow_challenge():
            self._ack_now = True
            self._host.wake(self)

    def _on_synchronized(self, segment: Segment, now: float) -> None:
        flags = segment.flags
        seq = unwrap(segment.seq, self._irs, self._rcv_nxt)
        window = max(self._rcv_adv - self._rcv_nxt, 0)
        if flags & TCP_RST:
            if seq == self._rcv_nxt:
                self._apply(Ev.RST, reason="reset")
            elif self._rcv_nxt <= seq < self._rcv_nxt + max(window, 1):
                self._challenge()
            else:
                self._host.count("rst_out_of_window")
            return
        if flags & TCP_SYN:
            if self.state is State.SYN_RECEIVED and seq == 0 and not flags & TCP_ACK:
                self._send_syn(ack=True)  # the peer did not get our SYN-ACK
            else:
                self._challenge()  # RFC 5961 section 4
            return
        length = len(segment.payload) + (1 if flags & TCP_FIN else 0)
        if seq + length < self._rcv_nxt or seq > self._rcv_nxt + window:
            self._challenge("out_of_window")
            return
        if not flags & TCP_ACK:
            self._host.count("no_ack")
            return
        self._touch(now)
        if self.state is State.SYN_RECEIVED:
            ack = unwrap(segment.ack, self._iss, self._snd_una)
            if not 1 <= ack <= self._snd_max:
                self._host.count("bad_ack")
                self._emit_reset_for(segment)
                return
            self._snd_una = 1
            self._retries = 0
            self._rto_at = None
            self._sample_rtt(1, now)
            self._apply(Ev.ACK_OF_SYN, reason="")
        if not self._on_ack(segment, seq, now):
            return
        if self.state is State.CLOSED:
            return
        self._on_data(segment, seq)

    def _update_window(self, segment: Segment, seq: int, ack: int) -> None:
        if self._wl1 < seq or (self._wl1 == seq and self._wl2 <= ack):
            shift = 0 if segment.flags & TCP_SYN else self._snd_shift
            self._snd_wnd = segment.window << shift
            self._max_snd_wnd = max(self._max_snd_wnd, self._snd_wnd)
            self._wl1, self._wl2 = seq, ack

    def _sample_rtt(self, acked_to: int, now: float) -> None:
        if self._timed is not None and acked_to > self._timed[0]:
            self.rto.sample(now - self._timed[1])
            self._timed = None

    def _on_ack(self, segment: Segment, seq: int, now: float) -> bool:
        """RFC 9293 3.10.7.4's fifth step; False when the segment is to be dropped."""
        ack = unwrap(segment.ack, self._iss, self._snd_una)
        if ack > self._snd_max:
            self._host.count("ack_of_unsent")
            self._ack_now = True
            self._host.wake(self)
            return False
        if ack < self._snd_una - self._max_snd_wnd:
            self._host.count("ack_too_old")
            self._challenge()
            return False
        old_window = self._snd_wnd
        self._update_window(segment, seq, ack)
        if self._sack and segment.sack_blocks:
            for left, right in segment.sack_blocks:
                start = unwrap(left, self._iss, self._snd_una)
                end = unwrap(right, self._iss, self._snd_una)
                self._scoreboard.add(start, end, self._snd_una, self._snd_max)
        if self._snd_wnd == 0:
            self._retries = 0  # a live peer answers our probes
        if ack > self._snd_una:
            self._on_new_ack(ack, now)
        elif (
            ack == self._snd_una
            and self._snd_max > self._snd_una
            and not segment.payload
            and not segment.flags & TCP_FIN
            and (self._snd_wnd == old_window or segment.sack_blocks)
        ):
            self._on_duplicate_ack(now)
        elif self._snd_wnd > old_window:
            self._host.wake(self)
        return True

    def _on_new_ack(self, ack: int, now: float) -> None:
        acked = ack - self._snd_una
        self._sample_rtt(ack, now)
        data_end = self._buf_start + len(self._send_buf)
        freed_to = min(ack, data_end)
        if freed_to > self._buf_start:
            del self._send_buf[: freed_to - self._buf_start]
            self._buf_start = freed_to
        self._snd_una = ack
        self._snd_nxt = max(self._snd_nxt, ack)
        self._scoreboard.advance(ack)
        self._retries = 0
        if self._in_recovery:
            if ack >= self._recover:
                self._in_recovery = False
                self.cc.on_recovery_end()
            else:
                self._rexmit_high = max(self._rexmit_high, ack)
                if not self._sack:  # NewReno's partial ACK: the next hole, at once
                    self._send_data(ack, data_end - ack, now)
        else:
            self.cc.on_ack(acked)
        self._dupacks = 0
        self._rto_at = None
        if self._snd_max > self._snd_una:
            self._arm_rto(now)
        if self._fin_at is not None and ack == self._fin_at + 1:
            self._apply(Ev.ACK_OF_FIN, reason="closed")
        if self._want_writable and len(self._send_buf) < self._config.send_buffer_bytes:
            self._want_writable = False
            self._host.report(Writable(self))
        self._host.wake(self)

    def _on_duplicate_ack(self, now: float) -> None:
        self._dupacks += 1
        sacked_enough = (
            self._sack and self._scoreboard.sacked_bytes >= (DUPLICATE_ACK_THRESHOLD - 1) * self.mss
        )
        if not self._in_recovery and (self._dupacks >= DUPLICATE_ACK_THRESHOLD or sacked_enough):
            self._in_recovery = True
            self._recover = self._snd_max
            self.cc.on_loss(self._snd_max - self._snd_una)
            data_end = self._buf_start + len(self._send_buf)
            used = self._send_data(self._snd_una, data_end - self._snd_una, now)
            self._rexmit_high = self._snd_una + max(used, 1)
        self._host.wake(self)

    def _on_data(self, segment: Segment, seq: int) -> None:
        flags = segment.flags
        payload = segment.payload
        if self.state not in RECEIVING_STATES:
            if flags & TCP_FIN and self.state is State.TIME_WAIT:
                self._apply(Ev.FIN, reason="")  # a FIN again: ACK it, TIME-WAIT anew
            return
        window_end = self._rcv_nxt + max(self._rcv_adv - self._rcv_nxt, 0)
        fin = bool(flags & TCP_FIN)
        start = seq
        if start < self._rcv_nxt:
            payload = payload[self._rcv_nxt - start :]
            start = self._rcv_nxt
            self._ack_now = True
        if start + len(payload) > window_end:
            payload = payload[: max(window_end - start, 0)]
            fin = False
            self._ack_now = True
            self._host.count("beyond_window")
        if payload:
            if start == self._rcv_nxt:
                filled_hole = len(self._ooo) > 0
                self._recv_buf += payload
                self._rcv_nxt += len(payload)
                while (ready := self._ooo.pop_ready(self._rcv_nxt)) is not None:
                    self._recv_buf += ready[1]
                    self._rcv_nxt += len(ready[1])
                self._unacked_segments += 1
                if filled_hole or self._unacked_segments >= ACK_EVERY_SEGMENTS:
                    self._ack_now = True
                if not self._readable_told:
                    self._readable_told = True
                    self._host.report(Readable(self))
            else:
                if not self._ooo.add(start, payload):
                    self._host.count("out_of_order_full")
                self._ack_now = True
        if fin:
            self._peer_fin_at = start + len(payload)
        if self._peer_fin_at is not None and self._peer_fin_at == self._rcv_nxt:
            self._peer_fin_at = None
            self._rcv_nxt += 1
            self.peer_closed = True
            self._apply(Ev.FIN, reason="")
            self._host.report(Readable(self))
        if self._ack_now or self._unacked_segments:
            self._host.wake(self)
