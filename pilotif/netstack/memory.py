"""The node's budget of buffered bytes, shared by all its connections (what Linux's tcp_mem
is to its sockets, and gVisor's and smoltcp's buffer limits to theirs), sans-IO: no
allocation is watched, the connections say what their buffers hold after every change.

Each connection has an `Account`, charged what its buffers hold (the receive buffer with
its out-of-order queue, and the send buffer), but never less than its reserve each way
while it is open: RESERVE_SEGMENTS of the largest MSS, so that every connection keeps a
window and a write of its own however full the node is. The reserve is charged when the
connection is made (a connection whose reserve does not fit is refused) and given back
when it enters TIME-WAIT or closes. The charges together never exceed the budget, so
neither do the bytes held.

Beyond its reserve a connection takes from the pool, by these rules:
- below the pressure line (`memory_pressure_fraction` of the budget), up to its own caps
  (the StackConfig's per-connection buffers);
- above it (pressure), only connections that hold less than their share of what lies
  above the line (that room over the open connections) take more, and no further than
  that share: the others' windows stop growing (the edge already advertised stays: RFC
  9293 never moves it left), their writes are refused and their data is dropped (the
  peer sends it again). Connections that fill their buffers (a peer that never reads,
  an application that does not) stop at the line, and the room above it stays for the
  connections that hold little: one connection, or one peer with many, cannot starve
  the rest;
- out-of-order data never goes above the pressure line, in-order data never above the
  budget.

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
        """The accounts' charges together: held bytes, or the reserve where more."""
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
        self.send_bytes = 0
        """What the send buffer holds."""
        self._reserved = True
        self._charge = 2 * memory.reserve_bytes
        memory.charged_bytes += self._charge
        memory.open_accounts += 1

    @property
    def held_bytes(self) -> int:
        return self.receive_bytes + self.send_bytes

    def hold(self, receive_bytes: int, send_bytes: int) -> None:
        """The buffers now hold this much (each way)."""
        memory = self._memory
        before = self.held_bytes
        memory.held_bytes += receive_bytes + send_bytes - before
        self.receive_bytes, self.send_bytes = receive_bytes, send_bytes
        if self._recharge() or self.held_bytes < before:
            memory.given_back(self)

    def hold_receive(self, receive_bytes: int) -> None:
        """The receive buffer and the out-of-order queue now hold this much."""
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

    def receive_room(self, in_order: bool) -> int:
        """Bytes more the receive side may hold now: the reserve's rest, then in-order
        data up to the budget while this connection holds less than its share (else up
        to the pressure line), out-of-order data up to the pressure line."""
        return self._room(self.receive_bytes, in_order=in_order, grow=False)

    def window_room(self) -> int:
        """Bytes more the advertised window may cover: as `receive_room` for in-order
        data, and under pressure no further than this connection's share."""
        return self._room(self.receive_bytes, in_order=True, grow=True)

    def send_room(self) -> int:
        """Bytes more the application may queue now (as `window_room`)."""
        return self._room(self.send_bytes, in_order=True, grow=True)

    def _room(self, side_bytes: int, *, in_order: bool, grow: bool) -> int:
        memory = self._memory
        reserve_room = max(memory.reserve_bytes - side_bytes, 0) if self._reserved else 0
        below_share = self.held_bytes < memory.share_bytes
        line = memory.budget_bytes if in_order and below_share else memory.pressure_bytes
        pool_room = max(line - memory.charged_bytes, 0)
        if grow and memory.under_pressure:
            pool_room = min(pool_room, max(memory.share_bytes - self.held_bytes, 0))
        return reserve_room + pool_room

    def _recharge(self) -> bool:
        """Charge what is held (the reserve where more); whether the charge went down."""
        memory = self._memory
        if self._reserved:
            charge = max(self.receive_bytes, memory.reserve_bytes)
            charge += max(self.send_bytes, memory.reserve_bytes)
        else:
            charge = self.held_bytes
        before, self._charge = self._charge, charge
        memory.charged_bytes += charge - before
        return charge < before
