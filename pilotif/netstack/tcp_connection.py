"""One TCP connection, sans-IO: RFC 9293 segment processing (3.10.7) driving the state
table of tcp_state.py over its two halves, the receiving side (tcp_receiver.py: receive
buffer, out-of-order queue, the window and SACK blocks we advertise, when an ACK is due)
and the sending side (tcp_sender.py: send buffer, retransmission with Karn's rule,
NewReno with fast retransmit and SACK-based recovery, the peer's window); here: the
handshake and its options, RFC 5961's checks, the timers (retransmission, delayed ACK,
keepalive, TIME-WAIT), building our segments, the application's calls, and the charge of
both halves' buffers to the node's memory budget (memory.py).

Three inputs, as every core of pilotif: the application's calls (send, receive, close,
abort: they only change buffers and ask to be polled), segments (`on_segment`), and the
clock (`transmit` and `on_timer` take `now`). Output goes to the host (the stack):
packets, events, and the wish to be polled. Sequence numbers are kept unwrapped inside
(offsets from the initial sequence numbers: our SYN is 0, our first data byte 1), and
wrapped only on the wire.
"""

from typing import Final, Protocol

from pilotif.netstack.config import MAX_WINDOW_SCALE, StackConfig
from pilotif.netstack.congestion import Controller
from pilotif.netstack.events import Closed, Connected, Event, Readable, Writable
from pilotif.netstack.memory import NodeMemory
from pilotif.netstack.rto import RtoEstimator
from pilotif.netstack.segment import (
    SEQ_SPACE,
    TCP_RST,
    Segment,
    build_segment,
    syn_options,
    unwrap,
)
from pilotif.netstack.tcp_receiver import Receiver
from pilotif.netstack.tcp_sender import AckResult, Sender
from pilotif.netstack.tcp_state import (
    QUEUEING_STATES,
    RECEIVING_STATES,
    Action,
    LocalProtocolError,
    State,
)
from pilotif.netstack.tcp_state import Event as Ev
from pilotif.netstack.tcp_state import transition as table_transition
from pilotif.packet.ip import (
    IPV4_MIN_HEADER_BYTES,
    IPV6_ADDRESS_BYTES,
    IPV6_HEADER_BYTES,
    TCP_ACK,
    TCP_FIN,
    TCP_MIN_HEADER_BYTES,
    TCP_PSH,
    TCP_SYN,
)
from pilotif.packet.segments import SuperPacket

DEFAULT_MSS_IPV4: Final = 536
"""The MSS to assume when a SYN names none (RFC 9293 3.7.1)."""
DEFAULT_MSS_IPV6: Final = 1220
MIN_MSS_BYTES: Final = 64
"""The least MSS a peer can make us use (Linux's floor is 48): a SYN that names less gets
this, so that every segment still carries data next to its options."""
_FIN_STATES: Final = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK}
)
"""States whose data and FIN may still be unacknowledged: transmit serves them."""


class ConnectionHost(Protocol):
    """What a connection needs from its stack."""

    def emit(self, packet: bytes | SuperPacket) -> None:
        """Send one IP packet (or one large segment, to be cut as TSO does)."""
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
        memory: NodeMemory,
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
        self._account = memory.open(self._on_memory_room)
        self._writer_waits = False
        """A write was cut short by the node's budget: Writable follows room."""
        self._receiver = Receiver(config, host.count, self._local_mss, self._account)
        self._sender = Sender(
            config,
            self._receiver,
            self._emit,
            iss,
            min(self._local_mss, DEFAULT_MSS_IPV6 if ipv6 else DEFAULT_MSS_IPV4),
        )
        self._scaling = False
        self._now = 0.0
        """The time of the call being served (every entry point sets it)."""
        self._keepalive_at: float | None = None
        self._keepalive_probes = 0
        self._time_wait_at: float | None = None

    @property
    def mss(self) -> int:
        """Payload bytes of our segments: the path's, and no more than the peer takes."""
        return self._sender.mss

    def lower_path_mtu(self, mtu: int) -> bool:
        """The path carries at most `mtu` bytes (an ICMP "too big"): cut segments to fit,
        never below the protocol's default MSS (a peer cannot make them tiny); whether
        the MSS went down. What was lost goes again at the retransmission timer."""
        ipv6 = len(self.local[0]) == IPV6_ADDRESS_BYTES
        header = (IPV6_HEADER_BYTES if ipv6 else IPV4_MIN_HEADER_BYTES) + TCP_MIN_HEADER_BYTES
        mss = max(mtu - header, DEFAULT_MSS_IPV6 if ipv6 else DEFAULT_MSS_IPV4)
        if mss >= self._sender.mss:
            return False
        self._sender.mss = mss
        return True

    @property
    def cc(self) -> Controller:
        """The congestion controller."""
        return self._sender.cc

    @property
    def rto(self) -> RtoEstimator:
        """The retransmission timeout's estimator."""
        return self._sender.rto

    @property
    def retransmissions(self) -> int:
        """Segments sent again (after a timeout, fast retransmit or SACK holes)."""
        return self._sender.retransmissions

    @property
    def timeouts(self) -> int:
        """Retransmission timer expiries (persist probes included)."""
        return self._sender.timeouts

    @property
    def peer_closed(self) -> bool:
        """The peer's FIN arrived: after the buffered data, nothing more comes."""
        return self._receiver.peer_closed

    # -- the application's side -------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue data; returns how many bytes were taken (the send buffer and the node's
        memory budget are capped; a Writable event follows when there is room again)."""
        if self.state not in QUEUEING_STATES or self._sender.fin_at is not None:
            raise LocalProtocolError(f"cannot send in {self.state.value}")
        account = self._account
        if not account.fits_below_line(len(data)) and (room := account.send_room()) < len(data):
            data = memoryview(data)[:room]
            self._writer_waits = True
            account.wait()
            self._host.count("memory_write_refused")
        taken = self._sender.queue(data)
        if taken:
            self._send_buffer_changed()
            self._host.wake(self)
        return taken

    def _send_buffer_changed(self) -> None:
        """Charge the send buffer's length (an ACK changes it only when the acknowledged
        front is cut, once half of it is: most ACKs cost a comparison)."""
        held = len(self._sender.buffer)
        if held != self._account.send_bytes:
            self._account.hold_send(held)

    def _on_memory_room(self) -> None:
        """The node's memory was given back: a refused write may go on, a window held
        back may open (an ACK says so)."""
        if self.state is State.CLOSED:
            return
        if self._writer_waits:
            if self._account.send_room() > 0:
                self._writer_waits = False
                self._host.report(Writable(self))
            else:
                self._account.wait()
        if self.state in RECEIVING_STATES and self._receiver.window_opened(self._sender.mss):
            self._ack_soon()

    def receive(self, max_bytes: int | None = None) -> bytes:
        """Data received in order (b"" when none waits; see peer_closed for the end)."""
        data = self._receiver.read(max_bytes)
        if (
            data
            and self.state in RECEIVING_STATES
            and self._receiver.window_opened(self._sender.mss)
        ):
            self._ack_soon()
        return data

    @property
    def readable_bytes(self) -> int:
        """Bytes waiting to be read."""
        return len(self._receiver.buffer)

    @property
    def bytes_in_flight(self) -> int:
        """Sequence space sent and not yet acknowledged."""
        return self._sender.snd_max - self._sender.snd_una

    @property
    def send_buffered_bytes(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return self._sender.buffered_bytes

    def close(self) -> None:
        """No more data from us: a FIN follows the queued data (calling it again, or
        after the connection ended, does nothing)."""
        if self._sender.fin_at is not None or self.state in (State.CLOSED, State.TIME_WAIT):
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
        self._sender.arm_rto(now)

    def accept_syn(self, segment: Segment, now: float) -> None:
        """Passive open from a listener: take the peer's SYN, answer SYN-ACK."""
        self._now = now
        self._take_syn(segment)
        self._apply(Ev.SYN, reason="")
        self._sender.arm_rto(now)
        self._touch(now)

    def _take_syn(self, segment: Segment) -> None:
        if segment.mss is not None:
            mss = max(min(self._local_mss, segment.mss), MIN_MSS_BYTES)
        else:
            mss = min(self._local_mss, self._sender.mss)
        self._scaling = segment.window_scale is not None and self._config.window_scale
        if segment.window_scale is not None and self._scaling:
            snd_shift = min(segment.window_scale, MAX_WINDOW_SCALE)
            rcv_shift = self._config.receive_window_shift()
        else:
            snd_shift = rcv_shift = 0
        sack = segment.sack_permitted and self._config.sack
        self._receiver.start(segment.seq, rcv_shift, sack)
        self._sender.start(segment, mss, snd_shift, sack)

    # -- transitions ------------------------------------------------------------------
    def _ack_soon(self) -> None:
        """An ACK goes out at the next poll."""
        self._receiver.ack_now = True
        self._host.wake(self)

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
            self._ack_soon()
        elif action is Action.SEND_FIN:
            self._sender.queue_fin()
            self._host.wake(self)
        elif action is Action.CONNECTED:
            self._ack_soon()
            self._host.established(self)
            self._host.report(Connected(self))
            if self._sender.fin_at is not None:
                self._apply(Ev.CLOSE, reason="closed")
        elif action is Action.START_TIME_WAIT:
            self._ack_soon()
            self._sender.rto_at = self._keepalive_at = None
            self._time_wait_at = self._now + self._config.time_wait_s
            self._sender.discard()
            self._send_buffer_changed()
            self._receiver.finished()
            self._account.release_reserve()
            self._host.time_wait(self)
        elif action is Action.SEND_RST:
            self._send_rst()
            self._delete(reason)
        elif action is Action.DELETE:
            self._delete(reason)

    def _delete(self, reason: str) -> None:
        self.state = State.CLOSED
        self._sender.rto_at = self._receiver.ack_at = None
        self._keepalive_at = self._time_wait_at = None
        self._sender.discard()
        self._send_buffer_changed()
        self._receiver.discard()
        self._account.release_reserve()
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
            and unwrap(segment.seq, self._receiver.irs, self._receiver.rcv_nxt)
            > self._receiver.rcv_nxt
        )

    # -- timers -----------------------------------------------------------------------
    def deadline(self) -> float | None:
        """When on_timer must next run."""
        times = [
            t
            for t in (
                self._sender.rto_at,
                self._sender.lost_check_at(),
                self._sender.pace_at,
                self._receiver.ack_at,
                self._keepalive_at,
                self._time_wait_at,
            )
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
        receiver = self._receiver
        if receiver.ack_at is not None and now >= receiver.ack_at:
            receiver.ack_at = None
            receiver.ack_now = True
        sender = self._sender
        lost_check_at = sender.lost_check_at()
        if lost_check_at is not None and now >= lost_check_at:
            sender.on_lost_check(now)
        if sender.pace_at is not None and now >= sender.pace_at:
            sender.pace_at = None  # what pacing held back goes at the transmit that follows
        if sender.rto_at is not None and now >= sender.rto_at:
            sender.rto_at = None
            self._on_rto(now)
            if self.state is State.CLOSED:
                return
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._on_keepalive(now)

    def _touch(self, now: float) -> None:
        """The peer was heard from: keepalives start over."""
        self._keepalive_probes = 0
        idle = self._config.keepalive_idle_s
        if idle is not None and self.state not in (State.TIME_WAIT, State.CLOSED):
            self._keepalive_at = now + idle

    def _on_rto(self, now: float) -> None:
        retries = self._sender.expire()
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            if retries > self._config.syn_retries:
                self._apply(Ev.TIMEOUT, reason="timeout")
                return
            self._send_syn(ack=self.state is State.SYN_RECEIVED)
            self._sender.arm_rto(now)
            return
        if retries > self._config.max_retransmissions:
            self._apply(Ev.TIMEOUT, reason="timeout")
            return
        if self._sender.on_timeout(now):
            self._host.wake(self)

    def _on_keepalive(self, now: float) -> None:
        self._keepalive_at = None
        if self.state not in (State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_2):
            return
        if self._keepalive_probes >= self._config.keepalive_probes:
            self._apply(Ev.TIMEOUT, reason="timeout")
            return
        self._keepalive_probes += 1
        self._emit(self._sender.snd_una - 1, TCP_ACK)
        self._keepalive_at = now + self._config.keepalive_interval_s

    # -- output -----------------------------------------------------------------------
    def _emit(
        self,
        seq: int,
        flags: int,
        payload: bytes | memoryview = b"",
        options: bytes = b"",
        *,
        segment_payload: int = 0,
    ) -> None:
        receiver = self._receiver
        syn = bool(flags & TCP_SYN)
        ack = (receiver.irs + receiver.rcv_nxt) % SEQ_SPACE if flags & TCP_ACK else 0
        if flags & TCP_ACK:  # no ACK is due any more
            receiver.ack_now = False
            receiver.unacked_segments = 0
            receiver.ack_at = None
            if not syn and receiver.sack and len(receiver.ooo):
                options = options + receiver.sack_option()
        packet = build_segment(
            self.local[0],
            self.remote[0],
            (self.local[1], self.remote[1]),
            (self._sender.iss + seq) % SEQ_SPACE,
            ack,
            flags,
            receiver.window_field(syn, self._sender.mss),
            options,
            payload,
            tcp_checksum=not segment_payload,
        )
        if segment_payload:
            ipv6 = len(self.local[0]) == IPV6_ADDRESS_BYTES
            ip_header = IPV6_HEADER_BYTES if ipv6 else IPV4_MIN_HEADER_BYTES
            self._host.emit(SuperPacket(memoryview(packet), ip_header, segment_payload))
        else:
            self._host.emit(packet)

    def _send_syn(self, ack: bool) -> None:
        shift = self._config.receive_window_shift() if self._config.window_scale else None
        if ack:
            shift = shift if self._scaling else None
            sack = self._sender.sack
        else:
            sack = self._config.sack
        options = syn_options(self._local_mss, shift, sack)
        self._emit(0, TCP_SYN | (TCP_ACK if ack else 0), options=options)
        self._sender.syn_sent(self._now)

    def _send_rst(self) -> None:
        self._emit(self._sender.snd_nxt, TCP_RST | TCP_ACK)

    def transmit(self, now: float) -> None:
        """Send what the windows allow, and the ACK that is due; arm the timers."""
        self._now = now
        sender = self._sender
        receiver = self._receiver
        if self.state in _FIN_STATES and sender.snd_una > 0:
            sender.transmit_stream(now)
        if receiver.ack_now and self.state is not State.CLOSED and receiver.rcv_nxt > 0:
            self._emit(sender.snd_nxt, TCP_ACK)
        elif receiver.unacked_segments and receiver.ack_at is None:
            receiver.ack_at = now + self._config.delayed_ack_s
        sender.arm_if_waiting(now)

    # -- input ------------------------------------------------------------------------
    def on_segment(self, segment: Segment, now: float) -> None:
        """A segment for this connection (checksums already checked)."""
        self._now = now
        if self.state is State.ESTABLISHED and self._predicted(segment, now):
            return
        if self.state is State.SYN_SENT:
            self._on_syn_sent(segment, now)
        elif self.state is not State.CLOSED:
            self._on_synchronized(segment, now)

    def _predicted(self, segment: Segment, now: float) -> bool:
        """Header prediction (RFC 9293 3.10.7.4's common case, Van Jacobson's): in
        ESTABLISHED, a segment with only ACK (and PSH) set, no SACK blocks, at RCV.NXT,
        whose data fits the window with nothing held out of order, that acknowledges new
        data (the peer's window open), or carries data and acknowledges nothing new (the
        peer's window as it was), while the sender recovers nothing, is taken here with
        the same result as the general path, less its checks (Sender.predicted_ack);
        False (nothing done) for any other segment."""
        if segment.flags & ~TCP_PSH != TCP_ACK or segment.sack_blocks:
            return False
        receiver = self._receiver
        seq = receiver.rcv_nxt
        payload = segment.payload
        if (segment.seq - receiver.irs - seq) % SEQ_SPACE or not receiver.takes_next(len(payload)):
            return False
        sender = self._sender
        ack = sender.predicted_ack(segment)
        if ack is None or not (payload or ack > sender.snd_una):
            return False
        self._touch(now)
        sender.update_window(segment, seq, ack)
        if ack > sender.snd_una:
            sender.take_new_ack(ack, now)
            self._send_buffer_changed()
            self._on_ack(AckResult.NEW)
        if payload and receiver.take_next(payload):
            self._host.report(Readable(self))
        if receiver.ack_now or receiver.unacked_segments:
            self._host.wake(self)
        return True

    def _on_syn_sent(self, segment: Segment, now: float) -> None:
        flags = segment.flags
        if flags & TCP_ACK and self._sender.unwrap_ack(segment.ack, 0) != 1:
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
            self._sender.update_window(segment, 0, 1)
            self._sender.syn_acked(now)
            self._apply(Ev.SYN_ACK, reason="")
        else:
            self._apply(Ev.SYN, reason="")
            self._sender.arm_rto(now)

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
            self._ack_soon()

    def _on_synchronized(self, segment: Segment, now: float) -> None:
        flags = segment.flags
        receiver = self._receiver
        rcv_nxt = receiver.rcv_nxt
        seq = unwrap(segment.seq, receiver.irs, rcv_nxt)
        window = max(receiver.rcv_adv - rcv_nxt, 0)
        if flags & TCP_RST:
            if seq == rcv_nxt:
                self._apply(Ev.RST, reason="reset")
            elif rcv_nxt <= seq < rcv_nxt + max(window, 1):
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
        if seq + length < rcv_nxt or seq > rcv_nxt + window:
            self._challenge("out_of_window")
            return
        if not flags & TCP_ACK:
            self._host.count("no_ack")
            return
        self._touch(now)
        if self.state is State.SYN_RECEIVED:
            ack = self._sender.unwrap_ack(segment.ack, self._sender.snd_una)
            if not 1 <= ack <= self._sender.snd_max:
                self._host.count("bad_ack")
                self._emit_reset_for(segment)
                return
            self._sender.syn_acked(now)
            self._apply(Ev.ACK_OF_SYN, reason="")
        result = self._sender.on_ack(segment, seq, now)
        if result is AckResult.NEW:
            self._send_buffer_changed()
        if result is not AckResult.NOTHING and not self._on_ack(result):
            return
        if self.state is State.CLOSED:
            return
        self._on_data(segment, seq)

    def _on_ack(self, result: AckResult) -> bool:
        """What the sending side's reading of an ACK (RFC 9293 3.10.7.4's fifth step)
        means to the connection; False when the segment is to be dropped."""
        sender = self._sender
        if result is AckResult.UNSENT:
            self._host.count("ack_of_unsent")
            self._ack_soon()
            return False
        if result is AckResult.TOO_OLD:
            self._host.count("ack_too_old")
            self._challenge()
            return False
        if result is AckResult.NEW:
            if sender.fin_at is not None and sender.snd_una == sender.fin_at + 1:
                self._apply(Ev.ACK_OF_FIN, reason="closed")
            if sender.writable_again():
                self._host.report(Writable(self))
            self._host.wake(self)
        elif result is AckResult.MORE_TO_SEND:
            self._host.wake(self)
        return True

    def _on_data(self, segment: Segment, seq: int) -> None:
        fin = bool(segment.flags & TCP_FIN)
        if self.state not in RECEIVING_STATES:
            if fin and self.state is State.TIME_WAIT:
                self._apply(Ev.FIN, reason="")  # a FIN again: ACK it, TIME-WAIT anew
            return
        receiver = self._receiver
        readable, fin_reached = receiver.take(seq, segment.payload, fin)
        if readable:
            self._host.report(Readable(self))
        if fin_reached:
            self._apply(Ev.FIN, reason="")
            self._host.report(Readable(self))
        if receiver.ack_now or receiver.unacked_segments:
            self._host.wake(self)
