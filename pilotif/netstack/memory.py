"""The node's budget of buffered bytes, shared by all its connections (what Linux's tcp_mem
is to its sockets, and gVisor's and smoltcp's buffer limits to theirs), sans-IO: no
allocation is watched, the connections say what their buffers hold after every change.

Each connection has an `Account`, charged what its buffers hold (the send buffer) or may
come to hold (the receive side: the data the application has not read and the window
advertised, whose bytes the peer may send at any time; out-of-order data lies inside that
window), but never less than its reserve each way while it is open: RESERVE_SEGMENTS of
the largest MSS, so that every connection keeps a window and a write of its own however
full the node is. The reserve is charged when the connection is made (a connection whose
reserve does not fit is refused) and given back when it enters TIME-WAIT or closes. The
charges together never exceed the budget, so neither do the bytes held, nor what the
windows promise: the data a peer sends inside its window always has room, and is never
dropped for lack of it (a window is charged when it is advertised, not when it fills).

Beyond its reserve a connection takes from the pool (a window grows, a write is queued),
by these rules:
- below the pressure line (`memory_pressure_fraction` of the budget), up to its own caps
  (the StackConfig's per-connection buffers), and no further than the line;
- above it (pressure), only connections that hold (or were promised) less than their
  share of what lies above the line (that room over the open connections) take more,
  and no further than that share: the others' windows stop growing (the edge already
  advertised stays: RFC 9293 never moves it left) and their writes are refused.
  Connections that fill their buffers (a peer that never reads, an application that
  does not) stop at the line, and the room above it stays for the connections that hold
  little: one connection, or one peer with many, cannot starve the rest.

Memory given back wakes the accounts that wait (a refused write, a window held back): all
of them once the node falls below the pressure line, else the account that gave it.
"""

from collections.abc import Callable
from typing import Final

from pilotif.netstack.config import StackConfig

RESERVE_SEGMENTS: Final = 2
"""Each way, full segments a connection may always hold: two, since a receiver's window
update goes out once the window opened by two segments (and every second segment is
ACKed), so a reserve of one would leave the peer waiting for its persist timer."""


class NodeMemory:
    """The budget, what is charged against it, and the accounts that wait for room."""

    def __init__(self, config: StackConfig) -> None:
        self.budget_bytes = config.memory_budget_bytes
        self.pressure_bytes = int(config.memory_budget_bytes * config.memory_pressure_fraction)
        """The pressure line: above it windows stop growing for connections at their
        share, and out-of-order data is no longer held."""
        self.reserve_bytes = RESERVE_SEGMENTS * config.mss_bytes(ipv6=False)
        """A connection's reserve, each way."""
        self.charged_bytes = 0
        """The accounts' charges together: held (or promised) bytes, or the reserve where
        more."""
        self.held_bytes = 0
        """The bytes the connections' buffers hold together."""
        self.open_accounts = 0
        self._waiting: dict[Account, None] = {}

    @property
    def under_pressure(self) -> bool:
        """Whether the charges reached the pressure line."""
        return self.charged_bytes >= self.pressure_bytes

    @property
    def share_bytes(self) -> int:
        """What one connection may hold and still take from above the pressure line:
        that room over the open connections."""
        return (self.budget_bytes - self.pressure_bytes) // max(self.open_accounts, 1)

    def has_room_for_connection(self) -> bool:
        """Whether a new connection's reserve (both ways) fits in the budget."""
        return self.charged_bytes + 2 * self.reserve_bytes <= self.budget_bytes

    def open(self, on_room: Callable[[], None]) -> "Account":
        """A new connection's account (its reserve charged); `on_room` is called when
        memory it waits for may have been given back."""
        return Account(self, on_room)

    def wait(self, account: "Account") -> None:
        """Call `account.on_room` once memory is given back."""
        self._waiting[account] = None

    def stop_waiting(self, account: "Account") -> None:
        self._waiting.pop(account, None)

    def given_back(self, account: "Account") -> None:
        """`account` holds less than before: wake who may now have room (each woken
        account is forgotten: it waits again if it still has none)."""
        if not self._waiting:
            return
        if not self.under_pressure:
            woken, self._waiting = self._waiting, {}
            for waiting in woken:
                waiting.on_room()
        elif account in self._waiting:
            del self._waiting[account]
            account.on_room()


class Account:
    """One connection's charge against the node's budget (NodeMemory.open makes it)."""

    def __init__(self, memory: NodeMemory, on_room: Callable[[], None]) -> None:
        self._memory = memory
        self.on_room = on_room
        """Called (once per `wait`) when memory was given back."""
        self.receive_bytes = 0
        """What the receive buffer and the out-of-order queue hold."""
        self.promised_bytes = 0
        """What the receive side may come to hold: the unread data and the window
        advertised (what it holds lies inside)."""
        self.send_bytes = 0
        """What the send buffer holds."""
        self._reserved = True
        self._charge = 2 * memory.reserve_bytes
        memory.charged_bytes += self._charge
        memory.open_accounts += 1

    @property
    def held_bytes(self) -> int:
        return self.receive_bytes + self.send_bytes

    @property
    def committed_bytes(self) -> int:
        """What the buffers hold or were promised (the receive side's window)."""
        return max(self.receive_bytes, self.promised_bytes) + self.send_bytes

    def hold(self, receive_bytes: int, send_bytes: int) -> None:
        """The buffers now hold this much (each way)."""
        memory = self._memory
        before = self.held_bytes
        memory.held_bytes += receive_bytes + send_bytes - before
        self.receive_bytes, self.send_bytes = receive_bytes, send_bytes
        if self._recharge() or self.held_bytes < before:
            memory.given_back(self)

    def hold_receive(self, receive_bytes: int, promised_bytes: int) -> None:
        """The receive buffer and the out-of-order queue now hold `receive_bytes`, and may
        come to hold `promised_bytes` (the unread data and the window advertised)."""
        self.promised_bytes = promised_bytes if self._reserved else 0
        self.hold(receive_bytes, self.send_bytes)

    def hold_send(self, send_bytes: int) -> None:
        """The send buffer now holds this much."""
        self.hold(self.receive_bytes, send_bytes)

    def release_reserve(self) -> None:
        """The connection takes no more data either way (TIME-WAIT, closed): only what it
        still holds stays charged."""
        if not self._reserved:
            return
        self._reserved = False
        self.promised_bytes = 0
        memory = self._memory
        memory.open_accounts -= 1
        memory.stop_waiting(self)
        if self._recharge():
            memory.given_back(self)

    def wait(self) -> None:
        """Call `on_room` when memory is given back (a write refused, a window held
        back)."""
        if self._reserved:
            self._memory.wait(self)

    # -- what may be taken ------------------------------------------------------------
    def fits_below_line(self, size_bytes: int) -> bool:
        """Whether `size_bytes` more fit below the pressure line: then they may be taken,
        whatever they are (the quick answer, for the usual case)."""
        memory = self._memory
        return memory.charged_bytes + size_bytes <= memory.pressure_bytes

    def fits_in_budget(self, size_bytes: int) -> bool:
        """Whether `size_bytes` more fit in the budget at all (a window's edge rounded up
        to its scale's unit: a few bytes, taken whatever the shares say)."""
        memory = self._memory
        return memory.charged_bytes + size_bytes <= memory.budget_bytes

    def window_room(self) -> int:
        """Bytes more the receive side may be promised (its window grow by): the
        reserve's rest, then up to the pressure line, or beyond it up to this
        connection's share (never past the budget)."""
        return self._room(max(self.receive_bytes, self.promised_bytes))

    def send_room(self) -> int:
        """Bytes more the application may queue now (as `window_room`)."""
        return self._room(self.send_bytes)

    def _room(self, side_bytes: int) -> int:
        memory = self._memory
        reserve_room = max(memory.reserve_bytes - side_bytes, 0) if self._reserved else 0
        pool_room = max(memory.pressure_bytes - memory.charged_bytes, 0)
        below_share = memory.share_bytes - self.committed_bytes
        if below_share > pool_room:
            pool_room = min(below_share, memory.budget_bytes - memory.charged_bytes)
        return reserve_room + pool_room

    def _recharge(self) -> bool:
        """Charge what is held (the reserve where more); whether the charge went down."""
        memory = self._memory
        if self._reserved:
            charge = max(self.receive_bytes, self.promised_bytes, memory.reserve_bytes)
            charge += max(self.send_bytes, memory.reserve_bytes)
        else:
            charge = self.held_bytes
        before, self._charge = self._charge, charge
        memory.charged_bytes += charge - before
        return charge < before
