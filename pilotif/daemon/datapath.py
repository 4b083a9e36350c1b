"""The packet pump: the local stack's and the Bind's readers, the one timer, and the flush
that sends, writes and reports what the cores produced.

It reads a batch of packets per wake-up, hands it to the WireGuard core with the current
monotonic time, then flushes the core's one output (`Device.take_output`) and re-arms a
single timer. Control datagrams from the registry go to the node (when there is one) in
the same wake-up. The local stack is anything that speaks `pilotif.tun.stack.LocalStack`
(the kernel TUN's `TunBatch`).
"""

import asyncio
import socket
import time
from collections.abc import Callable

from pilotif.daemon.node_runner import NodeRunner
from pilotif.net.bind import Bind
from pilotif.net.udp_batch import RECEIVE_BUFFER_BYTES
from pilotif.tun.offload import READ_ARENA_BYTES
from pilotif.tun.stack import LocalStack
from pilotif.wg.device import Device
from pilotif.wg.drops import DropReason
from pilotif.wg.events import Event, Output
from pilotif.wg.messages import Coalesced

READ_BATCH_PACKETS = 64
"""Local packets read, and encrypted as one batch, before they are sent."""
READ_ROUNDS = 8
"""Batches of local packets, or UDP receives, handled per wake-up."""


class DataPath:
    """Moves packets between the local stack, the WireGuard core and the Bind on `loop`.

    The UDP readers start at once (joining the registry needs them); the local stack's
    reader once the stack exists (`start_tun`); `node` is set once the node has joined.
    """

    def __init__(
        self,
        device: Device,
        bind: Bind,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[Event], None],
    ) -> None:
        self.device = device
        self.bind = bind
        self.node: NodeRunner | None = None
        self.stack: LocalStack | None = None
        self._loop = loop
        self._on_event = on_event
        self._timer: asyncio.TimerHandle | None = None
        self._more: asyncio.Handle | None = None
        """The local stack's next round, when a round ended with more waiting."""
        self._timer_deadline: float | None = None
        self._sealed = memoryview(bytearray(2 * READ_ARENA_BYTES))
        """Where a batch of local packets is encrypted, until it is sent."""
        self._plaintexts = memoryview(bytearray(RECEIVE_BUFFER_BYTES))
        """Where the datagrams of one UDP receive are decrypted, until written locally."""
        self._carried: Output | None = None
        """What a receive produced besides its packets (written at once, before the
        next receive reuses `_plaintexts`): sent and reported by the next flush."""
        for sock in bind.sockets():
            loop.add_reader(sock.fileno(), self._on_udp_readable, sock)

    def start_stack(self, stack: LocalStack) -> None:
        """Read from and deliver to `stack` (the kernel TUN, or any local stack)."""
        self.stack = stack
        self.device.merges_for_tun = stack.merges_writes
        self._loop.add_reader(stack.fileno(), self.read_stack)

    def close(self) -> None:
        """Stop reading and timing (the stack and the sockets are closed by their owner)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._more is not None:
            self._more.cancel()
            self._more = None
        for sock in self.bind.sockets():
            self._loop.remove_reader(sock.fileno())
        if self.stack is not None:
            self._loop.remove_reader(self.stack.fileno())

    def read_stack(self) -> None:
        """Read and send what the local stack has (its fd is readable, or a stack that
        runs on the loop asks: `UserspaceStack.wake_with`)."""
        self._more = None
        assert self.stack is not None
        stack = self.stack
        read_batch = stack.read_batch
        send = self.device.send
        sealed = self._sealed
        now = time.monotonic()
        for _ in range(READ_ROUNDS):
            batch = read_batch(READ_BATCH_PACKETS)
            if batch:
                send(batch, now, sealed)
                self.flush(now)
            if stack.drained:
                return
        # More waits (maybe in the stack itself, where the fd cannot say so): after the
        # other readers have had their turn.
        self._more = self._loop.call_soon(self.read_stack)

    def _on_udp_readable(self, sock: socket.socket) -> None:
        bind = self.bind
        receive = self.device.receive
        plaintexts = self._plaintexts
        now = time.monotonic()
        for _ in range(READ_ROUNDS):
            received = bind.receive(sock)
            if received is None:
                break
            buffer, segment_size, source = received
            if not bind.is_registry(source):
                if bind.is_opener(buffer):
                    continue
                receive(Coalesced(buffer, segment_size), source, now, plaintexts)
                self._carry(self.device.take_output())
                continue
            sorted_ = bind.split_registry(buffer, segment_size, source)
            for data, endpoint in sorted_.wireguard:
                receive((data,), endpoint, now)
            if sorted_.control and self.node is not None:
                for data in sorted_.control:
                    self.node.receive_control(data, now, source)
                self.node.after_input(now)
        self.flush(now)
        if self.stack is not None:
            # What we wrote may have made the kernel answer at once (a TCP ACK): take
            # it now rather than after another trip through the event loop.
            self.read_stack()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        now = time.monotonic()
        self.device.handle_timer(now)
        self.flush(now)

    def flush(self, now: float) -> None:
        """Send and write what the cores produced, report their events, re-arm the timer."""
        device = self.device
        out = self._take()
        if self.node is not None and out.events:
            self.node.core.device_reported(out.events, now)
        if self.node is not None and self.node.core.has_output:
            self.node.drain()
            # What the node made the device do (a probe, a handshake) goes out now.
            _append(out, device.take_output())
        if out.datagrams:
            failed = self.bind.send(out.datagrams)
            if failed:
                device.drops[DropReason.SEND_FAILED] += failed
        for train, size, endpoint in out.trains:
            device.drops[DropReason.SEND_FAILED] += self.bind.send_train(train, size, endpoint)
        self._write_local(out)
        for event in out.events:
            self._on_event(event)
        self._rearm_timer()

    def _take(self) -> Output:
        """The device's output, after what was carried from the receives before it."""
        out = self.device.take_output()
        carried, self._carried = self._carried, None
        if carried is None:
            return out
        _append(carried, out)
        return carried

    def _carry(self, out: Output) -> None:
        """Write a receive's packets now; keep the rest for the next flush."""
        self._write_local(out)
        out.packets.clear()
        out.merged.clear()
        if not out:
            return
        if self._carried is None:
            self._carried = out
        else:
            _append(self._carried, out)

    def _write_local(self, out: Output) -> None:
        """Write the decrypted packets to the local stack (they may point into
        `_plaintexts`); the rest of `out` is the caller's."""
        stack = self.stack
        if stack is None:
            return
        drops = self.device.drops
        if out.packets:
            drops[DropReason.TUN_WRITE_FAILED] += stack.write(out.packets)
        if out.merged:
            drops[DropReason.TUN_WRITE_FAILED] += stack.write_merged(out.merged)

    def _rearm_timer(self) -> None:
        """Make the timer fire by the core's next deadline.

        An armed timer that fires no later than that stays: when it fires early, the
        core finds nothing due and the timer is armed again for the real deadline. Data
        moves the deadlines on every packet; cancelling and re-arming each time cost
        more than the occasional early wake-up.
        """
        deadline = self.device.get_timer()
        armed = self._timer_deadline
        if deadline is None or (armed is not None and armed <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)


def _append(first: Output, then: Output) -> None:
    """Put `then` after `first`, in `first`'s lists (the device handed both over: they are
    ours to change), instead of building a third output."""
    if not then:
        return
    first.datagrams.extend(then.datagrams)
    first.trains.extend(then.trains)
    first.packets.extend(then.packets)
    first.merged.extend(then.merged)
    first.events.extend(then.events)
