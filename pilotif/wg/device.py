"""The sans-IO WireGuard device: peers, sessions, cryptokey routing and timers.

Theory of operation. The device never touches a socket or a clock. It has three
inputs, each taking `now` (seconds on the caller's monotonic clock):

- `send(batch, now)`: what the local stack read: IP packets, or a TCP super-packet;
- `receive(batch, source, now)`: what the Bind received from `source`: UDP payloads,
  or one GRO receive of them (`Coalesced`);
- `handle_timer(now)`: called at (or after) `get_timer()`, which never names a moment
  after the next deadline and costs nothing to ask after every input.

After any input the caller takes the one output, `take_output()`: datagrams (and GSO
trains of them) for the Bind, packets (or merged writes) for the local stack, events.
The batch fast paths (sealing a run, a super-packet, opening a GRO receive at once) are
functions in `pilotif.wg.fastpath.rows`; the device keeps the protocol, composed of
parts with one job each: `handshakes` (initiations, retries, responses, cookies),
`sessions` (receiver indexes, keypair rotation), `keepalives` (the timers of sending),
`admission` (what reaches the local stack), `roaming` (endpoint moves), `alarm` (the
one timer) and `outbox` (the output being gathered).
Peer input is hostile: anything malformed, unauthenticated, replayed or not
allowed is dropped and counted in `drops` by reason; it never raises.
Wall time is needed only for the TAI64N timestamp of initiations:
`wall_offset_s` turns `now` into Unix time.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Final

from cryptography.exceptions import InvalidTag

from pilotif.packet.filter import PacketFilter
from pilotif.packet.ip import (
    BytesLike,
    is_echo_reply,
    packet_addresses,
)
from pilotif.packet.segments import SegmentError, SuperPacket, cut_segments
from pilotif.wg.admission import Admission
from pilotif.wg.alarm import Alarm
from pilotif.wg.allowed_ips import AllowedIPs
from pilotif.wg.constants import (
    KEEPALIVE_TIMEOUT_S,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REKEY_ON_RECEIVE_AGE_S,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from pilotif.wg.cookie import CookieGenerator
from pilotif.wg.crypto import KEY_SIZE
from pilotif.wg.drops import DropReason, new_drop_counters
from pilotif.wg.events import KeysZeroed, Output, PeerEndpoint
from pilotif.wg.fastpath.batch_loops import coalesce_rows, open_rows
from pilotif.wg.fastpath.rows import (
    TRANSPORT_OVERHEAD_BYTES,
    batch_session,
    runs,
    seal_run,
    seal_super,
    sealed_bytes,
)
from pilotif.wg.handshake import LocalIdentity
from pilotif.wg.handshakes import Handshakes
from pilotif.wg.keepalives import NONCE, Keepalives
from pilotif.wg.messages import TRANSPORT_HEADER, Coalesced, split_coalesced
from pilotif.wg.outbox import Outbox
from pilotif.wg.path_mtu import PATH_MESSAGE_VERSION, PathMtu
from pilotif.wg.peer import Keypair, Peer
from pilotif.wg.roaming import Roamer, Roaming
from pilotif.wg.sessions import Sessions

NO_PRESHARED_KEY = bytes(KEY_SIZE)
_CUT_BUFFER_BYTES: Final = 2 * 65535
"""Where a super-packet the native loop does not seal is cut into its segments."""


class Device:
    """A WireGuard interface's protocol state; see the module docstring."""

    def __init__(
        self,
        private_key: bytes,
        *,
        mtu: int,
        wall_offset_s: float = 0.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.local = LocalIdentity.from_private_key(private_key)
        self.mtu = mtu
        self.drops = new_drop_counters()
        self._peers: dict[bytes, Peer] = {}
        self._routes: AllowedIPs[Peer] = AllowedIPs()
        self._alarm = Alarm()
        self._outbox = Outbox()
        self._sessions = Sessions(self._alarm, random_bytes)
        self._roamer = Roamer(self._outbox)
        self._handshakes = Handshakes(
            self.local,
            self._peers,
            (self._sessions, self._roamer, self._alarm, self._outbox),
            self.drops,
            wall_offset_s=wall_offset_s,
            random_bytes=random_bytes,
        )
        self._keepalives = Keepalives(self._alarm, self._outbox, self._handshakes)
        self._path_mtu = PathMtu(self._outbox, self._keepalives, self.drops)
        self._admission = Admission(self._routes, self.drops, self._path_mtu)
        self._cut_buffer = bytearray(_CUT_BUFFER_BYTES)
        self.merges_for_tun = False
        """Whether a decrypted batch of one TCP flow's next segments goes out merged
        (natively, `Output.merged`) rather than packet by packet: for a local stack
        that takes virtio headers."""

    # -- configuration -------------------------------------------------------------

    def accept_only_to(self, addresses: Iterable[bytes]) -> None:
        """Deliver only packets addressed to one of `addresses` (packed): a node, not a
        router. Others are dropped as DESTINATION_NOT_LOCAL."""
        self._admission.accept_only_to(addresses)

    @property
    def local_addresses(self) -> frozenset[bytes] | None:
        """What decrypted packets must be addressed to (`Admission.local_addresses`)."""
        return self._admission.local_addresses

    @property
    def wall_offset_s(self) -> float:
        """Added to `now` for the timestamp of our initiations (Unix time)."""
        return self._handshakes.wall_offset_s

    @wall_offset_s.setter
    def wall_offset_s(self, seconds: float) -> None:
        self._handshakes.wall_offset_s = seconds

    @property
    def public_key(self) -> bytes:
        """Our static public key."""
        return self.local.public_key

    def add_peer(
        self,
        public_key: bytes,
        *,
        allowed_ips: Iterable[IPv4Network | IPv6Network] = (),
        endpoint: PeerEndpoint | None = None,
        preshared_key: bytes | None = None,
        persistent_keepalive_s: int | None = None,
        now: float,
    ) -> Peer:
        """Add (or replace) a peer; raises ValueError for our own key."""
        if public_key == self.public_key:
            raise ValueError("a peer cannot have our own public key")
        self.remove_peer(public_key)
        peer = Peer(
            public_key=public_key,
            preshared_key=preshared_key or NO_PRESHARED_KEY,
            allowed_ips=list(allowed_ips),
            endpoint=endpoint,
            persistent_keepalive_s=persistent_keepalive_s,
            cookie_generator=CookieGenerator(public_key),
        )
        self._peers[public_key] = peer
        for network in peer.allowed_ips:
            self._routes.insert(network, peer)
        if persistent_keepalive_s and endpoint is not None:
            peer.timers.persistent_keepalive = self._alarm.arm(now)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a peer, its routes and all its sessions."""
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._routes.remove_value(peer)
        self._roamer.set(public_key, None)
        self._sessions.zero(peer)

    def peers(self) -> list[Peer]:
        """All peers, in the order they were added."""
        return list(self._peers.values())

    def peer(self, public_key: bytes) -> Peer | None:
        """The peer with this static key, if any."""
        return self._peers.get(public_key)

    def set_endpoint(self, public_key: bytes, endpoint: PeerEndpoint) -> None:
        """Send to `endpoint` from now on (until an authenticated packet roams it)."""
        peer = self._peers.get(public_key)
        if peer is not None:
            peer.endpoint = endpoint
            peer.unanswered_since_s = None

    def set_roaming(self, public_key: bytes, roaming: Roaming | None) -> None:
        """Which authenticated sources may move the peer's endpoint from now on (None:
        every one, plain WireGuard roaming). Each move is reported as EndpointChanged."""
        self._roamer.set(public_key, roaming)

    def set_packet_filter(self, public_key: bytes, packet_filter: PacketFilter | None) -> None:
        """Apply a port policy to what the peer sends us (None: everything passes)."""
        peer = self._peers.get(public_key)
        if peer is not None:
            peer.packet_filter = packet_filter

    def set_persistent_keepalive(self, public_key: bytes, seconds: int | None, now: float) -> None:
        """Send a keepalive to the peer after `seconds` of sending nothing (None: never)."""
        peer = self._peers.get(public_key)
        if peer is None:
            return
        peer.persistent_keepalive_s = seconds
        peer.timers.persistent_keepalive = (
            self._alarm.arm(now + seconds) if seconds and peer.endpoint is not None else None
        )

    def rehandshake(self, public_key: bytes, now: float) -> None:
        """Start a new handshake with a peer now, even if its session is fresh and the
        last initiation is recent (one in flight is sent again now, as its retry): our
        way to it changed (the caller does this once per change of this host's network
        or relay, not per packet)."""
        peer = self._peers.get(public_key)
        if peer is not None:
            self._handshakes.restart(peer, now)

    def initiate_handshake(self, public_key: bytes, now: float) -> None:
        """Start a handshake with a peer unless one is in flight or a session is fresh."""
        peer = self._peers.get(public_key)
        if peer is None:
            return
        keypair = peer.current
        if keypair is None or not keypair.can_send(now):
            self._handshakes.initiate(peer, now, is_retry=False)

    def probe_with_initiations(self, public_key: bytes, endpoints: Sequence[PeerEndpoint]) -> None:
        """Send a copy of each initiation (and retry) to these candidate endpoints too,
        until called again (with none to stop): a peer that a relay cannot carry (it
        talks to another registry replica) still gets a session, directly."""
        peer = self._peers.get(public_key)
        if peer is not None:
            peer.probe_endpoints = tuple(endpoints)

    def set_peer_mtu(self, public_key: bytes, mtu: int | None) -> None:
        """Send the peer no packet larger than `mtu` (None: than the device's MTU)."""
        peer = self._peers.get(public_key)
        if peer is not None:
            peer.mtu = mtu if mtu is None else min(mtu, self.mtu)

    def send_path_probe(self, public_key: bytes, probe_id: int, size: int, now: float) -> bool:
        """A path MTU probe of `size` plaintext bytes to the peer (pilotif.wg.path_mtu);
        False when it has no session to send it with."""
        peer = self._peers.get(public_key)
        return peer is not None and self._path_mtu.probe(peer, probe_id, size, now)

    def send_keepalive_to(self, public_key: bytes, endpoint: PeerEndpoint, now: float) -> bool:
        """Probe a candidate path: an authenticated keepalive to `endpoint`, leaving the
        peer's endpoint as it is. False when there is no session to send it with."""
        peer = self._peers.get(public_key)
        if peer is None or peer.current is None or not peer.current.can_send(now):
            return False
        self._keepalives.send_with(peer, peer.current, now, endpoint)
        return True

    # -- output ------------------------------------------------------------------

    def take_output(self) -> Output:
        """Everything produced since the last call (datagrams, trains, packets, merged
        writes, events), handed over once: the device starts afresh."""
        return self._outbox.take()

    # -- outbound ------------------------------------------------------------------

    def send(
        self,
        batch: Sequence[BytesLike] | SuperPacket,
        now: float,
        sealed: memoryview | None = None,
    ) -> None:
        """Route and encrypt what the local stack read, in order: IP packets, or one TCP
        or UDP super-packet (TSO, USO: one flow's segments, headers once).

        Packets for a peer with a usable session are sealed back to back into `sealed`
        (a new buffer when None, or when the rest does not fit) with one bookkeeping per
        run of packets to the same destination; the datagrams in the output are views of
        it, valid until the caller reuses `sealed`. A super-packet is sealed as one GSO
        train as it is cut (natively), else cut into its packets first. A packet
        without a session is queued for the handshake it starts.
        """
        if isinstance(batch, SuperPacket):
            if sealed is not None and self._send_super(batch, now, sealed):
                return
            try:
                batch = cut_segments(
                    batch.packet,
                    batch.transport_start,
                    batch.segment_payload,
                    self._cut_buffer,
                    udp=batch.udp,
                )
            except SegmentError:
                self.drops[DropReason.NOT_IP] += 1
                return
        self._send_packets(batch, now, sealed)

    def _send_packets(
        self, packets: Sequence[BytesLike], now: float, sealed: memoryview | None
    ) -> None:
        mtu = self.mtu
        if sealed is None:
            sealed = memoryview(bytearray(sealed_bytes(packets, mtu)))
        datagrams = self._outbox.out.datagrams
        offset = start = 0
        for end, destination in runs(packets):
            run = self._send_run(destination, now) if destination is not None else None
            rows = packets[start:end]
            start = end
            if run is None:
                for packet in rows:
                    self._handshakes.stage_routed(self._routes, packet, now)
                continue
            peer, keypair, endpoint = run
            cap = mtu
            if peer.mtu is not None:
                cap = peer.mtu
                rows = self._path_mtu.fitting(peer, cap, rows, now)
            room = REJECT_AFTER_MESSAGES - keypair.send_counter
            rows, late = (rows, ()) if len(rows) <= room else (rows[:room], rows[room:])
            while rows:
                views, end_offset = seal_run(keypair, rows, cap, sealed, offset)
                if not views:
                    # The caller's buffer is full: the rest goes to a new one.
                    rest = sealed_bytes(rows, mtu) + sealed_bytes(packets[end:], mtu)
                    sealed, offset = memoryview(bytearray(rest)), 0
                    continue
                datagrams += [(view, endpoint) for view in views]
                count = len(views)
                part = rows if count == len(rows) else rows[:count]
                if peer.packet_filter is not None:
                    peer.packet_filter.note_sent(part, now)
                self._sent_run(run, keypair.send_counter + count, end_offset - offset, part[0], now)
                offset = end_offset
                rows = rows[count:]
            for packet in late:
                self._handshakes.stage_routed(self._routes, packet, now)

    def _send_super(self, batch: SuperPacket, now: float, sealed: memoryview) -> bool:
        """Seal a super-packet as one GSO train into `sealed`, natively; whether it went
        (not without the native loop, a peer, a session, or room below the message
        limit, or when the headers do not describe the packet). Its segments share one
        flow: a UDP one is noted once for the packet filter (TCP needs no note)."""
        addresses = packet_addresses(batch.packet)
        run = self._send_run(addresses[1], now) if addresses is not None else None
        if run is None:
            return False
        keypair = run[1]
        sealed_train = seal_super(keypair, batch, run[0].mtu or self.mtu, sealed)
        if sealed_train is None:
            return False
        count, size, total = sealed_train
        if batch.udp and run[0].packet_filter is not None:
            run[0].packet_filter.note_sent((batch.packet,), now)
        self._outbox.out.trains.append((sealed[:total], size, run[2]))
        self._sent_run(run, keypair.send_counter + count, total, batch.packet, now)
        return True

    def _send_run(
        self, destination: bytes, now: float
    ) -> tuple[Peer, Keypair, PeerEndpoint] | None:
        """The peer, session and endpoint that packets to `destination` go out with now,
        if it has all three."""
        peer = self._routes.lookup(destination)
        if peer is None or peer.endpoint is None:
            return None
        keypair = peer.current
        if keypair is None or not keypair.can_send(now):
            return None
        return peer, keypair, peer.endpoint

    def _sent_run(
        self,
        run: tuple[Peer, Keypair, PeerEndpoint],
        counter: int,
        sent_bytes: int,
        first: BytesLike,
        now: float,
    ) -> None:
        """The bookkeeping of packets sent to one peer up to `counter`, `first` the first
        of them. A lone echo reply does not start waiting for an answer: otherwise each
        side's path check (an echo) would make the other side's kernel reply start the
        next one, back and forth for as long as the peers are idle."""
        peer, keypair, _ = run
        lone = counter - keypair.send_counter == 1
        keypair.send_counter = counter
        waiting = peer.unanswered_since_s
        self._keepalives.sent(peer, sent_bytes, True, now)
        if waiting is None and lone and is_echo_reply(first):
            peer.unanswered_since_s = None
        self._keepalives.keep_key_fresh(peer, keypair, now)

    # -- inbound -------------------------------------------------------------------

    def receive(
        self,
        batch: Sequence[BytesLike] | Coalesced,
        source: PeerEndpoint,
        now: float,
        plaintexts: memoryview | None = None,
    ) -> None:
        """Handle what the Bind received from `source`, in order: UDP payloads, or one
        GRO receive of them; never raises on peer input.

        Transport messages are decrypted back to back into `plaintexts` (which must hold
        the sum of their lengths; a new buffer when None) with one bookkeeping per run
        of one session; the packets in the output are views into it, valid until the
        caller reuses `plaintexts`. Handshake messages go to their handlers.

        The usual GRO receive (transport messages of one session, counters increasing,
        all new, plain IPv4 packets from one source inside) is checked at once: per
        datagram only the decryption is left. With `merges_for_tun`, a batch of one TCP
        flow's next segments goes out as one merged write (checked as it is merged,
        natively).
        """
        if plaintexts is None:
            size = len(batch.buffer) if isinstance(batch, Coalesced) else sum(map(len, batch))
            plaintexts = memoryview(bytearray(size))
        if isinstance(batch, Coalesced):
            if self._receive_at_once(batch, source, now, plaintexts):
                return
            batch = split_coalesced(batch.buffer, batch.segment_size)
        self._receive_datagrams(batch, source, now, plaintexts)

    def _receive_datagrams(
        self,
        datagrams: Sequence[BytesLike],
        source: PeerEndpoint,
        now: float,
        plaintexts: memoryview,
    ) -> None:
        """The one receive pipeline, datagram by datagram (a run of one session at a
        time)."""
        drops = self.drops
        unpack_header = TRANSPORT_HEADER.unpack_from
        pack_nonce = NONCE.pack
        offset = run_bytes = 0
        run_data = False
        run_index = -1
        run: tuple[Peer, Keypair] | None = None
        for datagram in datagrams:
            if len(datagram) < TRANSPORT_MIN_SIZE:
                drops[DropReason.MALFORMED] += 1
                continue
            kind, index, counter = unpack_header(datagram)
            if kind != MESSAGE_TRANSPORT:
                if run is not None and run_bytes:
                    self._received_transport(*run, source, run_bytes, run_data, now)
                run, run_index = None, -1
                if datagram[0] == MESSAGE_TRANSPORT:
                    drops[DropReason.MALFORMED] += 1  # non-zero reserved bytes
                else:
                    completed = self._handshakes.receive(datagram, source, now)
                    if completed is not None and not self._send_staged(completed, now):
                        self._keepalives.send(completed, now)
                continue
            if index != run_index:
                if run is not None and run_bytes:
                    self._received_transport(*run, source, run_bytes, run_data, now)
                found = self._sessions.receive_run(index, now)
                if isinstance(found, DropReason):
                    drops[found] += 1
                    run, run_index = None, -1
                    continue
                run, run_index = found, index
                run_bytes = 0
                run_data = False
            assert run is not None
            peer, keypair = run
            replay = keypair.replay
            if not replay.check(counter):
                drops[DropReason.REPLAY] += 1
                continue
            length = len(datagram) - TRANSPORT_OVERHEAD_BYTES
            plaintext = plaintexts[offset : offset + length]
            try:
                keypair.receive_aead.decrypt_into(
                    pack_nonce(counter),
                    memoryview(datagram)[TRANSPORT_HEADER_SIZE:],
                    None,
                    plaintext,
                )
            except InvalidTag:
                drops[DropReason.DECRYPT_FAILED] += 1
                continue
            if not replay.update(counter):
                drops[DropReason.REPLAY] += 1
                continue
            run_bytes += len(datagram)
            if length:
                # A path MTU probe or answer is no data (as a keepalive is not).
                run_data = run_data or plaintext[0] >> 4 != PATH_MESSAGE_VERSION
                self._deliver(peer, plaintext, now)
                offset += length
        if run is not None and run_bytes:
            self._received_transport(*run, source, run_bytes, run_data, now)

    def _receive_at_once(
        self, batch: Coalesced, source: PeerEndpoint, now: float, plaintexts: memoryview
    ) -> bool:
        """Take a GRO receive at once if it is the usual batch (see `receive`); whether
        it was."""
        buffer, segment_size = batch.buffer, batch.segment_size
        count = -(-len(buffer) // segment_size) if segment_size > 0 else 1
        last_size = len(buffer) - (count - 1) * segment_size
        session = batch_session(buffer, segment_size, count, last_size)
        if session is None:
            return False
        index, first = session
        run = self._sessions.receive_run(index, now)
        if isinstance(run, DropReason) or run[1] is run[0].next or first <= run[1].replay.newest:
            return False
        peer, keypair = run
        plain_size = segment_size - TRANSPORT_OVERHEAD_BYTES
        last_plain = last_size - TRANSPORT_OVERHEAD_BYTES
        failed = open_rows(
            keypair.receive_key,
            first,
            buffer,
            segment_size,
            count,
            last_size,
            TRANSPORT_HEADER_SIZE,
            plaintexts,
        )
        if failed:
            self._deliver_rows(peer, keypair, batch, first, failed, source, now, plaintexts)
            return True
        keypair.replay.update_run(first, first + count - 1)
        self._received_transport(peer, keypair, source, len(buffer), True, now)
        if self.merges_for_tun and coalesce_rows is not None:
            merged = coalesce_rows(plaintexts, plain_size, count, last_plain)
            if merged is not None:
                # One flow's segments, headers equal but for what differs segment to
                # segment: the first one's verdict is every one's.
                if self._admission.admitted(peer, plaintexts[:plain_size], now, count) is not None:
                    self._outbox.out.merged.append(merged)
                return True
        packets = self._admission.admitted_rows(peer, plaintexts, count, plain_size, last_plain)
        if packets is not None:
            self._outbox.out.packets.extend(packets)
            return True
        for row in range(count):
            size = plain_size if row < count - 1 else last_plain
            self._deliver(peer, plaintexts[row * plain_size : row * plain_size + size], now)
        return True

    def _deliver_rows(
        self,
        peer: Peer,
        keypair: Keypair,
        batch: Coalesced,
        first: int,
        failed: list[int],
        source: PeerEndpoint,
        now: float,
        plaintexts: memoryview,
    ) -> None:
        """The rare end of a GRO receive taken at once: some datagrams did not
        authenticate."""
        self.drops[DropReason.DECRYPT_FAILED] += len(failed)
        replay = keypair.replay
        plain_size = batch.segment_size - TRANSPORT_OVERHEAD_BYTES
        received = 0
        skip = set(failed)
        for row, datagram in enumerate(split_coalesced(batch.buffer, batch.segment_size)):
            if row in skip or not replay.update(first + row):
                continue
            received += len(datagram)
            offset = row * plain_size
            self._deliver(
                peer, plaintexts[offset : offset + len(datagram) - TRANSPORT_OVERHEAD_BYTES], now
            )
        if received:
            self._received_transport(peer, keypair, source, received, True, now)

    def _deliver(self, peer: Peer, plaintext: BytesLike, now: float) -> None:
        """Queue a decrypted packet of `peer` for the TUN if it is IP from its allowed IPs."""
        packet = self._admission.admitted(peer, plaintext, now)
        if packet is not None:
            self._outbox.out.packets.append(packet)

    def _received_transport(
        self,
        peer: Peer,
        keypair: Keypair,
        source: PeerEndpoint,
        received_bytes: int,
        data: bool,
        now: float,
    ) -> None:
        """The roaming, session rotation, timers and counters of authenticated transport
        messages from `source` (`data`: not only keepalives)."""
        peer.rx_bytes += received_bytes
        self._roamer.authenticated_from(peer, source, now, answered=data)
        if data and source == peer.endpoint:
            peer.last_data_received_s = now
        if self._sessions.first_message(peer, keypair, now):
            self._handshakes.complete(peer, now, initiator=False)
            self._send_staged(peer, now)
        timers = peer.timers
        timers.new_handshake = None
        self._alarm.arm_persistent_keepalive(peer, now)
        if (
            keypair is peer.current
            and keypair.is_initiator
            and now - keypair.created_s > REKEY_ON_RECEIVE_AGE_S
        ):
            self._handshakes.initiate(peer, now, is_retry=False)
        if data and timers.send_keepalive is None:
            timers.send_keepalive = self._alarm.arm(now + KEEPALIVE_TIMEOUT_S)

    def _send_staged(self, peer: Peer, now: float) -> bool:
        """Send the packets queued during the handshake; True if there were any."""
        keypair = peer.current
        if not peer.staged or keypair is None or peer.endpoint is None:
            return False
        staged = list(peer.staged)
        peer.staged.clear()
        self._send_packets(staged, now, None)
        return True

    # -- timers --------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` must run at the latest (None: no timer is armed): never
        after the earliest deadline of any peer's timer, maybe before it (a timer since
        stopped or moved later counts until timers are handled), and read without
        looking at any peer, however many there are."""
        return self._alarm.wake_by

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline has passed."""
        self._fire_timers(now)
        self._alarm.recompute(self._peers.values())

    def _fire_timers(self, now: float) -> None:
        for peer in list(self._peers.values()):
            timers = peer.timers
            if timers.retransmit_handshake is not None and timers.retransmit_handshake <= now:
                timers.retransmit_handshake = None
                self._handshakes.retransmit(peer, now)
            if timers.send_keepalive is not None and timers.send_keepalive <= now:
                timers.send_keepalive = None
                self._keepalives.send(peer, now)
            if timers.new_handshake is not None and timers.new_handshake <= now:
                timers.new_handshake = None
                self._handshakes.initiate(peer, now, is_retry=False)
            if timers.zero_key_material is not None and timers.zero_key_material <= now:
                timers.zero_key_material = None
                self._sessions.zero(peer)
                self._outbox.out.events.append(KeysZeroed(peer.public_key))
            if timers.persistent_keepalive is not None and timers.persistent_keepalive <= now:
                timers.persistent_keepalive = None
                self._keepalives.send(peer, now)
            if timers.forget_retired is not None and timers.forget_retired <= now:
                self._sessions.forget_retired(peer, now)
