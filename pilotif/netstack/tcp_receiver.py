"""The receiving half of one TCP connection, sans-IO: the receive buffer (capped) and the
out-of-order queue (reassembly.py), RCV.NXT and the peer's FIN, the window field we
advertise (scaled, no wider than the buffer's cap and the node's memory budget allow,
never moved left, no small openings: RFC 9293 3.8.6.2.2; the window is charged to the
budget when advertised, memory.py, so what the peer sends inside it always has room),
the SACK blocks we send (RFC
2018), and when an ACK is due (at once, every second segment, or after the delayed-ACK
time: RFC 9293 3.8.6.3).

The connection (tcp_connection.py) owns the state machine: it hands this side the data
of acceptable segments and sends the ACKs; this side says what the application is to be
told. Sequence numbers are offsets from the peer's initial sequence number (its SYN is 0).
"""

from collections.abc import Callable
from typing import Final

from pilotif.netstack.config import StackConfig
from pilotif.netstack.memory import Account
from pilotif.netstack.reassembly import OutOfOrder
from pilotif.netstack.segment import (
    MAX_SACK_BLOCKS,
    SEQ_SPACE,
    sack_option,
    sack_option_bytes,
)

MAX_WINDOW_FIELD: Final = 0xFFFF
ACK_EVERY_SEGMENTS: Final = 2
"""A receiver ACKs at least every second full segment (RFC 9293 3.8.6.3); a merged
segment counts as the full segments it carries (an ACK per merged run, as Linux's GRO)."""


class Receiver:
    """What we received from the peer and what we advertise to it."""

    def __init__(
        self, config: StackConfig, count: Callable[[str], None], mss: int, account: Account
    ) -> None:
        self._config = config
        self._count = count
        """Counts a drop by its reason (the stack's counters)."""
        self._account = account
        """The connection's charge against the node's memory budget."""
        self._mss = mss
        """The MSS we announced: the largest segment the peer sends (a merged run of its
        segments counts as the full ones it holds)."""
        self.irs = 0
        self.rcv_nxt = 0
        """0 until the peer's SYN arrives, then the next byte expected."""
        self.shift = 0
        """Our window scale (RFC 7323), 0 when the peer does not scale."""
        self.sack = False
        """Whether our ACKs carry SACK blocks (both sides permitted SACK)."""
        self.rcv_adv = 0
        """Right edge of the window we advertised (never moved left)."""
        self._window_target = min(config.initial_receive_window_bytes, config.receive_buffer_bytes)
        """What the unread data and the window may reach: the initial window, then the
        buffer's cap once half of that has arrived."""
        self._received_bytes = 0
        """Data taken so far, while the window is at its initial size."""
        self.buffer = bytearray()
        self.ooo = OutOfOrder(config.max_out_of_order_segments)
        self._peer_fin_at: int | None = None
        self.peer_closed = False
        """The peer's FIN arrived: after the buffered data, nothing more comes."""
        self._readable_told = False
        self.unacked_segments = 0
        self.ack_now = False
        self.ack_at: float | None = None
        """When the delayed ACK is due (None: not armed)."""

    def start(self, irs: int, shift: int, sack: bool) -> None:
        """The peer's SYN arrived with sequence number `irs`."""
        self.irs = irs
        self.rcv_nxt = 1
        self.shift = shift
        self.sack = sack

    def take(self, start: int, payload: bytes | memoryview, fin: bool) -> tuple[bool, bool]:
        """The data (and FIN) of an acceptable segment at offset `start`; returns (data
        became readable for the first time since the application emptied the buffer, the
        peer's FIN is reached now)."""
        window_end = self.rcv_nxt + max(self.rcv_adv - self.rcv_nxt, 0)
        if start < self.rcv_nxt:
            payload = payload[self.rcv_nxt - start :]
            start = self.rcv_nxt
            self.ack_now = True
        if start + len(payload) > window_end:
            payload = payload[: max(window_end - start, 0)]
            fin = False
            self.ack_now = True
            self._count("beyond_window")
        readable = False
        if payload and self._window_target < self._config.receive_buffer_bytes:
            self._grow_window(len(payload))
        if payload:
            if start == self.rcv_nxt:
                filled_hole = len(self.ooo) > 0
                readable = self._append(payload)
                while (ready := self.ooo.pop_ready(self.rcv_nxt)) is not None:
                    self.buffer += ready[1]
                    self.rcv_nxt += len(ready[1])
                if filled_hole:
                    self.ack_now = True
            else:
                if not self.ooo.add(start, payload):
                    self._count("out_of_order_full")
                self.ack_now = True
            self._account.hold_receive(self.held_bytes, self._promised())
        if fin:
            self._peer_fin_at = start + len(payload)
        if self._peer_fin_at is not None and self._peer_fin_at == self.rcv_nxt:
            self._peer_fin_at = None
            self.rcv_nxt += 1
            self.peer_closed = True
            return readable, True
        return readable, False

    def takes_next(self, size: int) -> bool:
        """Whether `size` bytes at RCV.NXT are the predicted case (header prediction):
        inside the window, nothing held out of order, no FIN of the peer's waiting."""
        return (
            size <= self.rcv_adv - self.rcv_nxt and not len(self.ooo) and self._peer_fin_at is None
        )

    def take_next(self, payload: bytes | memoryview) -> bool:
        """The data of a segment at RCV.NXT that `takes_next`: as `take` would take it;
        whether data became readable for the first time since the buffer was emptied."""
        if self._window_target < self._config.receive_buffer_bytes:
            self._grow_window(len(payload))
        readable = self._append(payload)
        self._account.hold_receive(self.held_bytes, self._promised())
        return readable

    def _append(self, payload: bytes | memoryview) -> bool:
        """In-order data into the buffer; an ACK is due every ACK_EVERY_SEGMENTS."""
        self.buffer += payload
        self.rcv_nxt += len(payload)
        self.unacked_segments += max(len(payload) // self._mss, 1)
        if self.unacked_segments >= ACK_EVERY_SEGMENTS:
            self.ack_now = True
        readable = not self._readable_told
        self._readable_told = True
        return readable

    def _grow_window(self, taken_bytes: int) -> None:
        """A connection that received half its initial window carries data: its window
        may reach the buffer's cap (a sender's first round trips fit in the initial one,
        so none waits for it; half, since a window nobody reads closes short of full)."""
        self._received_bytes += taken_bytes
        if self._received_bytes >= self._config.initial_receive_window_bytes // 2:
            self._window_target = self._config.receive_buffer_bytes

    def read(self, max_bytes: int | None) -> bytes:
        """Take up to `max_bytes` (all when None) from the receive buffer."""
        count = len(self.buffer) if max_bytes is None else max_bytes
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        if not self.buffer:
            self._readable_told = False
        if data:
            self._account.hold_receive(self.held_bytes, self._promised())
        return data

    @property
    def held_bytes(self) -> int:
        """What the receive buffer and the out-of-order queue hold."""
        return len(self.buffer) + self.ooo.bytes

    def finished(self) -> None:
        """No more data comes (TIME-WAIT): what is held out of order never will be read."""
        self.ooo.clear()
        self._account.hold_receive(self.held_bytes, self.held_bytes)

    def discard(self) -> None:
        """Forget what was received and not read (the connection ended)."""
        self.buffer.clear()
        self.ooo.clear()
        self._account.hold_receive(0, 0)

    def _promised(self) -> int:
        """What this side may come to hold: the unread data and the window advertised."""
        return len(self.buffer) + max(self.rcv_adv - self.rcv_nxt, 0)

    def _free(self) -> int:
        """How far past RCV.NXT the window may reach: its target (the buffer's cap once
        data has flowed) less what waits unread, and no further than the node's budget
        lets this connection be promised (what its window covers already is charged);
        held back by the budget, the account waits to be told when memory is given
        back. Nothing more comes after the peer's FIN: the window stays where it is."""
        if self.peer_closed:
            return 0
        free = self._window_target - len(self.buffer)
        window = max(self.rcv_adv - self.rcv_nxt, 0)
        if free <= window or self._account.fits_below_line(free - window):
            return free
        allowed = window + self._account.window_room()
        if allowed < free:
            self._account.wait()
            return allowed
        return free

    def window_opened(self, mss: int) -> bool:
        """Whether reading (or memory given back) opened the window enough to be worth an
        ACK of its own."""
        opened = self.rcv_nxt + self._free() - self.rcv_adv
        return opened >= min(self._config.receive_buffer_bytes // 2, 2 * mss)

    def window_field(self, syn: bool, mss: int) -> int:
        """The window field of the segment being built (and the edge it advertises)."""
        free = self._free()
        if syn:
            field = min(free, MAX_WINDOW_FIELD)
            self._advertise(self.rcv_nxt + field)
            return field
        edge = self.rcv_nxt + free
        if edge - self.rcv_adv < min(self._config.receive_buffer_bytes // 2, mss):
            edge = max(self.rcv_adv, self.rcv_nxt)  # no small openings (RFC 9293 3.8.6.2.2)
        # The field counts units of 2**shift: what is free is rounded down, but the edge
        # already advertised is rounded up, so that the peer never sees it move left
        # when RCV.NXT moved by less than a unit (RFC 7323 2.4; Linux ALIGNs it up) -
        # unless the budget has not even those few bytes left (then the peer sees the
        # edge a little left of where we still take data: `window_rounded_down`).
        window = max(self.rcv_adv - self.rcv_nxt, 0)
        kept = -(-window >> self.shift)
        field = min(max((edge - self.rcv_nxt) >> self.shift, kept), MAX_WINDOW_FIELD)
        beyond = (field << self.shift) - max(free, window)
        if beyond > 0 and not self._account.fits_in_budget(beyond):
            field = window >> self.shift
            self._count("window_rounded_down")
        self._advertise(self.rcv_nxt + (field << self.shift))
        return field

    def _advertise(self, edge: int) -> None:
        """The window reaches `edge` now (never left of where it reached): charged."""
        if edge > self.rcv_adv:
            self.rcv_adv = edge
            self._account.hold_receive(self.held_bytes, self._promised())

    def sack_option(self) -> bytes:
        """The SACK option our next segment carries (when `sack` is on and the out-of-order queue
        holds ranges)."""
        blocks = self.ooo.sack_blocks(MAX_SACK_BLOCKS)
        return sack_option(
            [((self.irs + s) % SEQ_SPACE, (self.irs + e) % SEQ_SPACE) for s, e in blocks]
        )

    def sack_option_bytes(self) -> int:
        """The room the SACK option takes in our next segment (as for
        `sack_option`; RFC 6691: the MSS leaves the options out)."""
        return sack_option_bytes(min(len(self.ooo), MAX_SACK_BLOCKS))
