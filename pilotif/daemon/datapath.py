"""The packet pump: the TUN and UDP readers, the one timer, and the flush that sends,
writes and reports what the cores produced.

It reads a batch of packets per wake-up, hands each to the overlay core with the current
monotonic time, then flushes what the core produced and re-arms a single timer. Control
datagrams from the registry go to the node (when there is one) in the same wake-up.
"""

import asyncio
import socket
import time
from collections.abc import Callable

from pilotif.daemon.node_runner import NodeRunner
from pilotif.net.bind import Bind
from pilotif.net.udp_batch import RECEIVE_BUFFER_BYTES
from pilotif.tun.offload import READ_ARENA_BYTES, SuperPacket, TunBatch
from pilotif.wg.device import Device
from pilotif.wg.drops import DropReason
from pilotif.wg.events import Event

READ_BATCH_PACKETS = 64
"""TUN packets read, and encrypted as one batch, before they are sent."""
READ_ROUNDS = 8
"""Batches of TUN packets, or UDP receives, handled per wake-up."""


class DataPath:
    """Moves packets between the TUN, the overlay core and the Bind on `loop`.

    The UDP readers start at once (joining the registry needs them); the TUN reader
    once the TUN exists (`start_tun`); `node` is set once the node has joined.
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
        self.tun_io: TunBatch | None = None
        self._loop = loop
        self._on_event = on_event
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._sealed = memoryview(bytearray(2 * READ_ARENA_BYTES))
        """Where a batch of TUN packets is encrypted, until it is sent."""
        self._plaintexts = memoryview(bytearray(RECEIVE_BUFFER_BYTES))
        """Where the datagrams of one UDP receive are decrypted, until written to the TUN."""
        for sock in bind.sockets():
            loop.add_reader(sock.fileno(), self._on_udp_readable, sock)

    def start_tun(self, tun_io: TunBatch) -> None:
        self.tun_io = tun_io
        self.device.merges_for_tun = tun_io.offloads.vnet_hdr
        self._loop.add_reader(tun_io.tun.fileno(), self._on_tun_readable)

    def close(self) -> None:
        """Stop reading and timing (the TUN and the sockets are closed by their owner)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in self.bind.sockets():
            self._loop.remove_reader(sock.fileno())
        if self.tun_io is not None:
            self._loop.remove_reader(self.tun_io.tun.fileno())

    def _on_tun_readable(self) -> None:
        assert self.tun_io is not None
        tun_io = self.tun_io
        read_batch = tun_io.read_batch
        send_packets = self.device.send_packets
        send_super = self.device.send_super
        sealed = self._sealed
        now = time.monotonic()
        for _ in range(READ_ROUNDS):
            packets = read_batch(READ_BATCH_PACKETS)
            if isinstance(packets, SuperPacket):
                header = packets.header
                if send_super(packets.packet, header.csum_start, header.gso_size, now, sealed):
                    self.flush(now)
                    continue
                packets = tun_io.split(packets)
            if packets:
                send_packets(packets, now, sealed)
                self.flush(now)
            if tun_io.drained:
                break

    def _on_udp_readable(self, sock: socket.socket) -> None:
        bind = self.bind
        receive_segments = self.device.receive_segments
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
                receive_segments(buffer, segment_size, source, now, plaintexts)
                self._write_tun()
                continue
            sorted_ = bind.split_registry(buffer, segment_size, source)
            for data, endpoint in sorted_.wireguard:
                self.device.receive_datagram(data, endpoint, now)
            if sorted_.control and self.node is not None:
                for data in sorted_.control:
                    self.node.receive_control(data, now, source)
                self.node.after_input(now)
        self.flush(now)
        if self.tun_io is not None:
            # What we wrote may have made the kernel answer at once (a TCP ACK): take
            # it now rather than after another trip through the event loop.
            self._on_tun_readable()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        now = time.monotonic()
        self.device.handle_timers(now)
        self.flush(now)

    def flush(self, now: float) -> None:
        """Send and write what the cores produced, report their events, re-arm the timer."""
        device = self.device
        if self.node is not None and device.events:
            self.node.core.device_reported(device.events, now)
        if self.node is not None and self.node.core.has_output:
            self.node.drain()
        if device.outgoing:
            failed = self.bind.send(device.outgoing)
            device.outgoing.clear()
            if failed:
                device.drops[DropReason.SEND_FAILED] += failed
        if device.trains:
            for train, size, endpoint in device.trains:
                device.drops[DropReason.SEND_FAILED] += self.bind.send_train(train, size, endpoint)
            device.trains.clear()
        self._write_tun()
        if device.events:
            events, device.events = device.events, []
            for event in events:
                self._on_event(event)
        self._rearm_timer()

    def _write_tun(self) -> None:
        """Write the decrypted packets to the TUN (they may point into `_plaintexts`)."""
        device = self.device
        if device.to_tun:
            if self.tun_io is not None:
                device.drops[DropReason.TUN_WRITE_FAILED] += self.tun_io.write(device.to_tun)
            device.to_tun.clear()
        if device.tun_writes:
            if self.tun_io is not None:
                failed = self.tun_io.write_merged(device.tun_writes)
                device.drops[DropReason.TUN_WRITE_FAILED] += failed
            device.tun_writes.clear()

    def _rearm_timer(self) -> None:
        """Make the timer fire by the core's next deadline.

        An armed timer that fires no later than that stays: when it fires early, the
        core finds nothing due and the timer is armed again for the real deadline. Data
        moves the deadlines on every packet; cancelling and re-arming each time cost
        more than the occasional early wake-up.
        """
        deadline = self.device.wake_by()
        armed = self._timer_deadline
        if deadline is None or (armed is not None and armed <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)
