"""The sans-IO WireGuard device: peers, sessions, cryptokey routing and timers.

Theory of operation. The device never touches a socket or a clock. It has three
inputs, each taking `now` (seconds on the caller's monotonic clock):

- `send_packets(packets, now)`: IP packets read from the TUN (`send_packet`: one);
- `receive_datagrams(datagrams, source, now)`: UDP payloads from the network
  (`receive_datagram`: one; `receive_segments`: one GRO receive);
- `handle_timers(now)`: called at (or after) `wake_by()`, which is no later than
  `next_timer()` and costs nothing to ask after every input.

After any input the caller drains its outputs: `outgoing` (datagrams and the endpoint
to send each to) and `trains` (GSO trains of them), `to_tun` (decrypted IP packets) and
`tun_writes` (merged ones, when `merges_for_tun`), and `events`.
Peer input is hostile: anything malformed, unauthenticated, replayed or not
allowed is dropped and counted in `drops` by reason; it never raises.
Wall time is needed only for the TAI64N timestamp of initiations:
`wall_offset_s` turns `now` into Unix time.
"""

import functools
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Final

from cryptography.exceptions import InvalidTag

from pilotif.packet.filter import MAY_CARRY_UDP, PacketFilter
from pilotif.packet.ip import is_echo_reply, packet_addresses
from pilotif.wg.allowed_ips import AllowedIPs
from pilotif.wg.constants import (
    AEAD_TAG_SIZE,
    HANDSHAKE_INITIATION_RATE_S,
    KEEPALIVE_TIMEOUT_S,
    MAX_GSO_SEGMENTS,
    MAX_RETIRED_KEYPAIRS,
    MAX_STAGED_PACKETS,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME_S,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME_S,
    REKEY_ATTEMPT_TIME_S,
    REKEY_ON_RECEIVE_AGE_S,
    REKEY_TIMEOUT_JITTER_MAX_S,
    REKEY_TIMEOUT_S,
    RETIRED_KEYPAIR_S,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
    UNDER_LOAD_HANDSHAKES_PER_S,
    UNDER_LOAD_HOLD_S,
)
from pilotif.wg.cookie import CookieChecker, CookieGenerator, source_bytes
from pilotif.wg.crypto import KEY_SIZE, BytesLike, generate_private_key, tai64n
from pilotif.wg.drops import DropReason, new_drop_counters
from pilotif.wg.events import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysZeroed,
    PeerEndpoint,
    RelayEndpoint,
)
from pilotif.wg.fastpath.batch_loops import coalesce_rows, open_rows, seal_rows, seal_tso
from pilotif.wg.handshake import (
    HandshakeError,
    InitiatorState,
    LocalIdentity,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from pilotif.wg.messages import (
    TRANSPORT_HEADER,
    MessageError,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
    split_coalesced,
)
from pilotif.wg.peer import Keypair, Peer

MAX_HANDSHAKE_ATTEMPTS = int(REKEY_ATTEMPT_TIME_S / REKEY_TIMEOUT_S)
"""Initiations sent for one handshake before we give up (whitepaper 6.4)."""
ZERO_KEYS_AFTER_S = REJECT_AFTER_TIME_S * 3
NO_PRESHARED_KEY = bytes(KEY_SIZE)
_INDEX_SPACE = 2**32
_NONCE: Final = struct.Struct("<4xQ")
"""The AEAD nonce of a transport counter: four zero bytes, then the counter."""
_TRANSPORT_OVERHEAD_BYTES: Final = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
_Pending = tuple[list[BytesLike], list[int], list[int]]
"""Packets of a run not sealed yet: the packets, their padded sizes, where their
messages start."""
_IPV4_FIRST_LENGTH_DESTINATION: Final = struct.Struct("!BxH12x4s")
_IPV4_VERSION: Final = 4
_IPV4_PLAIN_FIRST_BYTE: Final = 0x45
"""Version 4, a 20-byte header: the packets the fast path parses itself."""
_IPV4_MIN_BYTES: Final = 20
_IPV4_BYTES: Final = 4
_IPV4_TOTAL_LENGTH: Final = 2
_IPV4_SOURCE_OFFSET: Final = 12
_IPV4_DESTINATION_OFFSET: Final = 16
_IPV4_PROTO_OFFSET: Final = 9
_IPV6_NEXT_OFFSET: Final = 6
_COUNTER_OFFSET: Final = 8
_TYPE_MASK: Final = 0xFFFFFFFF
"""The first 8 bytes of a transport message, read as one little-endian integer: the type
word in the low 32 bits, the receiver index in the high ones."""
_INDEX_SHIFT: Final = 32
_VECTOR_MIN_DATAGRAMS: Final = 4
"""Below this many datagrams in one receive, the checks at once cost more than they save."""
_VECTOR_MIN_DATAGRAM_BYTES: Final = TRANSPORT_MIN_SIZE + 20
"""Each datagram of a batch taken at once carries at least an IPv4 header."""
_IPV4_PLAIN_FIRST_BYTES: Final = bytes([_IPV4_PLAIN_FIRST_BYTE]) * 256
_IPV4_SOURCE_BYTES: Final = range(_IPV4_SOURCE_OFFSET, _IPV4_SOURCE_OFFSET + _IPV4_BYTES)
_IPV4_DESTINATION_BYTES: Final = range(
    _IPV4_DESTINATION_OFFSET, _IPV4_DESTINATION_OFFSET + _IPV4_BYTES
)


@functools.cache
def _row_totals(plain_size: int, count: int) -> struct.Struct:
    """Reads the IPv4 total length of each of `count` packets laid `plain_size` bytes
    apart (from the first one's length field on)."""
    return struct.Struct("!" + f"{plain_size - 2}x".join(["H"] * count))


@functools.cache
def _row_headers(segment_size: int, count: int) -> struct.Struct:
    """Reads the first two 8-byte words (type and receiver index; counter) of each of
    `count` datagrams laid `segment_size` bytes apart, little-endian."""
    gap = f"{segment_size - 16}x" if segment_size > 16 else ""
    return struct.Struct("<" + gap.join(["QQ"] * count))


def padded_length(length: int, mtu: int) -> int:
    """A plaintext's length after WireGuard's padding: up to a multiple of 16, not past
    the MTU (a longer packet is not padded)."""
    padded = length + (-length % PADDING_MULTIPLE)
    return padded if padded <= mtu else max(length, mtu)


@dataclass(frozen=True)
class Roaming:
    """Which authenticated sources may move a peer's endpoint, as whoever chooses the
    peer's paths (the node) sets it with `Device.set_roaming`; the device applies it and
    reports each move (EndpointChanged): it never calls back."""

    to_udp: bool
    """A UDP address may take the endpoint."""
    to_relay_after_s: float | None
    """The peer's own relay endpoint may take it with a handshake initiation, or when
    nothing arrived on the current endpoint for longer than this; None: never (a relay
    endpoint of another peer never does)."""


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
        self.wall_offset_s = wall_offset_s
        self._random_bytes = random_bytes
        self._cookie_checker = CookieChecker(self.local, random_bytes)
        self._peers: dict[bytes, Peer] = {}
        self._routes: AllowedIPs[Peer] = AllowedIPs()
        self._by_index: dict[int, tuple[Peer, Keypair | InitiatorState]] = {}
        self._handshakes_window_start_s = 0.0
        self._handshakes_in_window = 0
        self._under_load_until_s = -1.0
        self._wake_by: float | None = None
        """No timer is due before this (see `wake_by`)."""
        self.outgoing: list[tuple[BytesLike, PeerEndpoint]] = []
        self.trains: list[tuple[memoryview, int, PeerEndpoint]] = []
        """Sealed GSO trains (`send_super`): datagrams back to back, all of the given size
        but the last, for one endpoint; sent after `outgoing`."""
        self.to_tun: list[BytesLike] = []
        self.merges_for_tun = False
        """Whether a decrypted batch of one TCP flow's next segments goes to `tun_writes`
        merged (natively) rather than to `to_tun` packet by packet: for a TUN that takes
        virtio headers."""
        self.tun_writes: list[bytes] = []
        """TUN writes, each a virtio header and the TCP super-packet merged from one
        decrypted batch (see `merges_for_tun`)."""
        self.events: list[Event] = []
        self.drops = new_drop_counters()
        self.local_addresses: frozenset[bytes] | None = None
        """Packed addresses (4 or 16 bytes) that decrypted packets must be addressed to;
        None takes any destination (a plain WireGuard interface that may route)."""
        self._local_ipv4: bytes | None = None
        """Our one IPv4 address (packed) among `local_addresses`, if there is just one."""
        self._roaming: dict[bytes, Roaming] = {}
        """Peer key -> which sources may move its endpoint (`set_roaming`)."""

    # -- configuration -------------------------------------------------------------

    def accept_only_to(self, addresses: Iterable[bytes]) -> None:
        """Deliver only packets addressed to one of `addresses` (packed): a node, not a
        router. Others are dropped as DESTINATION_NOT_LOCAL."""
        self.local_addresses = frozenset(addresses)
        ipv4 = [address for address in self.local_addresses if len(address) == _IPV4_BYTES]
        self._local_ipv4 = ipv4[0] if len(ipv4) == 1 else None

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
            peer.timers.persistent_keepalive = self._arm(now)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a peer, its routes and all its sessions."""
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._routes.remove_value(peer)
        self._roaming.pop(public_key, None)
        self._zero_keys(peer)

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
        if roaming is None:
            self._roaming.pop(public_key, None)
        else:
            self._roaming[public_key] = roaming

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
            self._arm(now + seconds) if seconds and peer.endpoint is not None else None
        )

    def rehandshake(self, public_key: bytes, now: float) -> None:
        """Start a new handshake with a peer now, even if its session is fresh and the
        last initiation is recent (one in flight is sent again now, as its retry): our
        way to it changed (the caller does this once per change of this host's network
        or relay, not per packet)."""
        peer = self._peers.get(public_key)
        if peer is None:
            return
        peer.last_initiation_sent_s = None
        if peer.handshake is not None and peer.timers.retransmit_handshake is not None:
            peer.timers.retransmit_handshake = None
            self._retransmit_handshake(peer, now)
        else:
            self._send_initiation(peer, now, is_retry=False)

    def initiate_handshake(self, public_key: bytes, now: float) -> None:
        """Start a handshake with a peer unless one is in flight or a session is fresh."""
        peer = self._peers.get(public_key)
        if peer is None:
            return
        keypair = peer.current
        if keypair is None or not keypair.can_send(now):
            self._send_initiation(peer, now, is_retry=False)

    def probe_with_initiations(self, public_key: bytes, endpoints: Sequence[PeerEndpoint]) -> None:
        """Send a copy of each initiation (and retry) to these candidate endpoints too,
        until called again (with none to stop): a peer that a relay cannot carry (it
        talks to another registry replica) still gets a session, directly."""
        peer = self._peers.get(public_key)
        if peer is not None:
            peer.probe_endpoints = tuple(endpoints)

    def send_keepalive_to(self, public_key: bytes, endpoint: PeerEndpoint, now: float) -> bool:
        """Probe a candidate path: an authenticated keepalive to `endpoint`, leaving the
        peer's endpoint as it is. False when there is no session to send it with."""
        peer = self._peers.get(public_key)
        if peer is None or peer.current is None or not peer.current.can_send(now):
            return False
        self._send_keepalive_message(peer, peer.current, now, endpoint)
        return True

    # -- outbound ------------------------------------------------------------------

    def send_packet(self, packet: BytesLike, now: float) -> None:
        """Route one IP packet from the TUN: a batch of one (`send_packets`)."""
        self.send_packets((packet,), now)

    def _sealed_bytes(self, packets: Sequence[BytesLike]) -> int:
        """What sealing `packets` takes, each padded and framed."""
        mtu = self.mtu
        return sum(padded_length(len(p), mtu) for p in packets) + len(packets) * (
            _TRANSPORT_OVERHEAD_BYTES
        )

    def _stage(self, packet: BytesLike, now: float) -> None:
        """A packet without a session to seal it with now: dropped (not IP, no route, no
        endpoint), or queued for the handshake this starts."""
        addresses = packet_addresses(packet)
        if addresses is None:
            self.drops[DropReason.NOT_IP] += 1
            return
        peer = self._routes.lookup(addresses[1])
        if peer is None:
            self.drops[DropReason.NO_ROUTE] += 1
            return
        if peer.endpoint is None:
            self.drops[DropReason.NO_ENDPOINT] += 1
            return
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self.drops[DropReason.QUEUE_FULL] += 1
        peer.staged.append(bytes(packet))
        self._send_initiation(peer, now, is_retry=False)

    def send_packets(
        self, packets: Sequence[BytesLike], now: float, sealed: memoryview | None = None
    ) -> None:
        """Route and encrypt IP packets from the TUN, in order: the one send pipeline (a
        single packet is a batch of one).

        Packets for a peer with a usable session are sealed back to back into `sealed`
        (a new buffer when None, or when the rest does not fit) with one bookkeeping per
        run of packets to the same destination; the views of them appended to `outgoing`
        are valid until the caller reuses `sealed`. A packet without a session is queued
        for the handshake it starts (`_stage`).
        """
        if sealed is None:
            sealed = memoryview(bytearray(self._sealed_bytes(packets)))
        outgoing = self.outgoing
        pack_header = TRANSPORT_HEADER.pack_into
        mtu = self.mtu
        capacity = len(sealed)
        offset = run_start = counter = remote_index = run_version = 0
        run: tuple[Peer, Keypair, PeerEndpoint] | None = None
        run_packet: BytesLike = b""
        # The run's packets not sealed yet: `_sent_run` seals them in one native call,
        # before the buffer changes.
        pending: _Pending = ([], [], [])
        rows, sizes, starts = pending
        # The run's peer's filter when it must remember outbound UDP flows, and where the
        # run's packets say their protocol:
        noting: PacketFilter | None = None
        proto_at = _IPV4_PROTO_OFFSET
        run_destination = b""
        for position, packet in enumerate(packets):
            length = len(packet)
            # The run goes on for a well-formed packet to the same destination; a plain
            # IPv4 header is checked here, anything else by packet_addresses.
            same_run = False
            if run is not None and length >= _IPV4_MIN_BYTES:
                if run_version == _IPV4_VERSION:
                    first, total, destination = _IPV4_FIRST_LENGTH_DESTINATION.unpack_from(packet)
                    same_run = (
                        destination == run_destination
                        and first == _IPV4_PLAIN_FIRST_BYTE
                        and _IPV4_MIN_BYTES <= total <= length
                    )
                else:
                    addresses = packet_addresses(packet)
                    same_run = addresses is not None and addresses[1] == run_destination
            if not same_run:
                if run is not None:
                    self._sent_run(
                        run, counter, offset - run_start, run_packet, now, (pending, sealed)
                    )
                addresses = packet_addresses(packet)
                run = self._send_run(addresses[1], now) if addresses is not None else None
                noting = None
                if run is not None and addresses is not None:
                    run_destination = addresses[1]
                    run_version = packet[0] >> 4
                    counter, remote_index = run[1].send_counter, run[1].remote_index
                    run_packet = packet
                    endpoint = run[2]
                    run_start = offset
                    noting = run[0].packet_filter
                    if noting is not None and not noting.records_udp:
                        noting = None
                    proto_at = (
                        _IPV4_PROTO_OFFSET if run_version == _IPV4_VERSION else _IPV6_NEXT_OFFSET
                    )
            padded = padded_length(length, mtu)
            end = offset + padded + _TRANSPORT_OVERHEAD_BYTES
            if run is None or counter >= REJECT_AFTER_MESSAGES:
                if run is not None:
                    self._sent_run(
                        run, counter, offset - run_start, run_packet, now, (pending, sealed)
                    )
                    run = None
                self._stage(packet, now)
                continue
            if end > capacity:
                # The caller's buffer is full: the rest goes to a new one.
                self._sent_run(run, counter, offset - run_start, run_packet, now, (pending, sealed))
                sealed = memoryview(bytearray(self._sealed_bytes(packets[position:])))
                capacity = len(sealed)
                offset = run_start = 0
                end = padded + _TRANSPORT_OVERHEAD_BYTES
            pack_header(sealed, offset, MESSAGE_TRANSPORT, remote_index, counter)
            rows.append(packet)
            sizes.append(padded)
            starts.append(offset)
            outgoing.append((sealed[offset:end], endpoint))
            if noting is not None and packet[proto_at] in MAY_CARRY_UDP:
                noting.note_outbound(packet, now)
            counter += 1
            offset = end
        if run is not None:
            self._sent_run(run, counter, offset - run_start, run_packet, now, (pending, sealed))

    def send_super(
        self,
        packet: memoryview,
        transport_start: int,
        segment_payload: int,
        now: float,
        sealed: memoryview,
    ) -> bool:
        """Seal a TCP super-packet from the TUN (TSO: one flow's segments, headers once)
        as one GSO train into `sealed`, cutting and sealing natively; True when it went.

        False leaves it to the caller to cut and hand to `send_packets` (the one pipeline
        for everything else): without the native loop, a peer, a session, or room below
        the message limit, or when the headers do not describe the packet. TCP needs no
        outbound note from the packet filter (only UDP answers are remembered).
        """
        addresses = packet_addresses(packet) if seal_tso is not None else None
        run = self._send_run(addresses[1], now) if addresses is not None else None
        if run is None or seal_tso is None:
            return False
        keypair = run[1]
        counter = keypair.send_counter
        if counter + MAX_GSO_SEGMENTS >= REJECT_AFTER_MESSAGES:
            return False
        try:
            count, size, total = seal_tso(
                keypair.send_key,
                counter,
                keypair.remote_index,
                packet,
                transport_start,
                segment_payload,
                self.mtu,
                sealed,
            )
        except ValueError:
            return False
        self.trains.append((sealed[:total], size, run[2]))
        self._sent_run(run, counter + count, total, packet, now)
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
        sealing: tuple[_Pending, memoryview] | None = None,
    ) -> None:
        """The bookkeeping of packets sent to one peer up to `counter`, `first` the first
        of them; with `sealing`, the run's packets not sealed yet are sealed first into
        its buffer (their counters follow on from the session's, not moved yet), and the
        pending lists emptied. A lone echo reply does not start waiting for an answer:
        otherwise each side's path check (an echo) would make the other side's kernel
        reply start the next one, back and forth for as long as the peers are idle."""
        peer, keypair, _ = run
        if sealing is not None and sealing[0][0]:
            (rows, sizes, starts), sealed = sealing
            seal_rows(
                keypair.send_key,
                keypair.send_counter,
                rows,
                sizes,
                starts,
                TRANSPORT_HEADER_SIZE,
                sealed,
            )
            rows.clear()
            sizes.clear()
            starts.clear()
        lone = counter - keypair.send_counter == 1
        keypair.send_counter = counter
        waiting = peer.unanswered_since_s
        self._sent_transport(peer, sent_bytes, True, now)
        if waiting is None and lone and is_echo_reply(first):
            peer.unanswered_since_s = None
        self._keep_key_fresh_sending(peer, keypair, now)

    def _send_keepalive_message(
        self, peer: Peer, keypair: Keypair, now: float, endpoint: PeerEndpoint | None = None
    ) -> None:
        """A transport message with nothing inside (to the peer's endpoint, or another)."""
        destination = endpoint or peer.endpoint
        assert destination is not None
        counter = keypair.send_counter
        keypair.send_counter = counter + 1
        datagram = TRANSPORT_HEADER.pack(
            MESSAGE_TRANSPORT, keypair.remote_index, counter
        ) + keypair.send_aead.encrypt(_NONCE.pack(counter), b"", None)
        self.outgoing.append((datagram, destination))
        self._sent_transport(peer, len(datagram), False, now)

    def _sent_transport(self, peer: Peer, sent_bytes: int, data: bool, now: float) -> None:
        """The timers and counters of transport messages just sent (`data`: not only
        keepalives)."""
        peer.tx_bytes += sent_bytes
        if data and peer.unanswered_since_s is None:
            peer.unanswered_since_s = now
        timers = peer.timers
        timers.send_keepalive = None
        if data and timers.new_handshake is None:
            timers.new_handshake = self._arm(now + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S)
        self._arm_persistent_keepalive(peer, now)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        keypair = peer.current
        if peer.endpoint is None:
            return
        if keypair is not None and keypair.can_send(now):
            self._send_keepalive_message(peer, keypair, now)
            self._keep_key_fresh_sending(peer, keypair, now)
        else:
            self._send_initiation(peer, now, is_retry=False)

    def _keep_key_fresh_sending(self, peer: Peer, keypair: Keypair, now: float) -> None:
        if keypair.send_counter > REKEY_AFTER_MESSAGES or (
            keypair.is_initiator and now - keypair.created_s > REKEY_AFTER_TIME_S
        ):
            self._send_initiation(peer, now, is_retry=False)

    def _send_initiation(self, peer: Peer, now: float, *, is_retry: bool) -> None:
        if not is_retry:
            if peer.handshake is not None and peer.timers.retransmit_handshake is not None:
                return
            peer.handshake_attempts = 0
        if (
            peer.last_initiation_sent_s is not None
            and not is_retry
            and now - peer.last_initiation_sent_s < REKEY_TIMEOUT_S
        ):
            if peer.staged and peer.timers.retransmit_handshake is None:
                # Too soon for another initiation: try again when allowed, so that
                # queued packets are not stuck until the next one arrives.
                peer.timers.retransmit_handshake = self._arm(
                    peer.last_initiation_sent_s + REKEY_TIMEOUT_S
                )
            return
        if peer.endpoint is None:
            return
        if peer.handshake is not None:
            self._by_index.pop(peer.handshake.sender_index, None)
        index = self._new_index()
        message, state = create_initiation(
            self.local,
            peer.public_key,
            index,
            tai64n(now + self.wall_offset_s),
            generate_private_key(),
        )
        peer.cookie_generator.add_macs(message, now)
        peer.handshake = state
        self._by_index[index] = (peer, state)
        peer.last_initiation_sent_s = now
        self._send_handshake_message(peer, bytes(message), now)
        for endpoint in peer.probe_endpoints:
            if endpoint != peer.endpoint:
                self.outgoing.append((bytes(message), endpoint))
                peer.tx_bytes += len(message)
        jitter = (
            int.from_bytes(self._random_bytes(2), "little") / 0xFFFF * REKEY_TIMEOUT_JITTER_MAX_S
        )
        peer.timers.retransmit_handshake = self._arm(now + REKEY_TIMEOUT_S + jitter)

    def _send_handshake_message(self, peer: Peer, message: bytes, now: float) -> None:
        assert peer.endpoint is not None
        self.outgoing.append((message, peer.endpoint))
        peer.tx_bytes += len(message)
        peer.timers.send_keepalive = None
        self._arm_persistent_keepalive(peer, now)

    def _arm_persistent_keepalive(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive_s:
            peer.timers.persistent_keepalive = self._arm(now + peer.persistent_keepalive_s)

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._random_bytes(4), "little") % _INDEX_SPACE
            if index not in self._by_index:
                return index

    # -- inbound -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: PeerEndpoint, now: float) -> None:
        """Handle one UDP payload from `source`: a batch of one (`receive_datagrams`)."""
        self.receive_datagrams((data,), source, now)

    def _receive_handshake_message(self, data: BytesLike, source: PeerEndpoint, now: float) -> None:
        """An initiation, response or cookie reply (anything else is malformed)."""
        kind = data[0]
        try:
            if kind == MESSAGE_INITIATION:
                self._receive_initiation(bytes(data), source, now)
            elif kind == MESSAGE_RESPONSE:
                self._receive_response(bytes(data), source, now)
            elif kind == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(bytes(data), now)
            else:
                self.drops[DropReason.MALFORMED] += 1
        except MessageError as error:
            self.drops[error.reason] += 1
        except HandshakeError as error:
            self.drops[error.reason] += 1

    def receive_datagrams(
        self,
        datagrams: Sequence[BytesLike],
        source: PeerEndpoint,
        now: float,
        plaintexts: memoryview | None = None,
    ) -> None:
        """Handle the UDP payloads of one receive from `source`, in order; never raises
        on peer input. The one receive pipeline: a single datagram is a batch of one,
        and `receive_segments` comes here for what it cannot take at once.

        Transport messages are decrypted back to back into `plaintexts` (which must hold
        the sum of their lengths; a new buffer when None) with one bookkeeping per run
        of one session; the packets appended to `to_tun` are views into it, valid until
        the caller reuses `plaintexts`. Handshake messages go to their handlers.
        """
        if plaintexts is None:
            plaintexts = memoryview(bytearray(sum(len(d) for d in datagrams)))
        drops = self.drops
        unpack_header = TRANSPORT_HEADER.unpack_from
        pack_nonce = _NONCE.pack
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
                    self._receive_handshake_message(datagram, source, now)
                continue
            if index != run_index:
                if run is not None and run_bytes:
                    self._received_transport(*run, source, run_bytes, run_data, now)
                found = self._receive_run(index, now)
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
            length = len(datagram) - _TRANSPORT_OVERHEAD_BYTES
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
                run_data = True
                self._deliver(peer, plaintext, now)
                offset += length
        if run is not None and run_bytes:
            self._received_transport(*run, source, run_bytes, run_data, now)

    def receive_segments(
        self,
        buffer: memoryview,
        segment_size: int,
        source: PeerEndpoint,
        now: float,
        plaintexts: memoryview,
    ) -> None:
        """Handle one GRO receive from `source`: datagrams of `segment_size` bytes back to
        back in `buffer` (the last may be shorter; 0 means one datagram).

        What `receive_datagrams` does with them. The usual batch (transport messages of
        one session, counters increasing, all new, plain IPv4 packets from one source
        inside) is checked at once (each field read down the rows by one `struct` or one
        strided copy): per datagram only the decryption is left. With `merges_for_tun`,
        a batch of one TCP flow's next segments becomes one merged write in `tun_writes`
        (checked as it is merged, natively).
        `plaintexts` must hold len(buffer) bytes; `to_tun` gets views into it.
        """
        count = -(-len(buffer) // segment_size) if segment_size > 0 else 1
        last_size = len(buffer) - (count - 1) * segment_size
        run = self._segments_run(buffer, segment_size, count, last_size, now)
        if run is None:
            self.receive_datagrams(split_coalesced(buffer, segment_size), source, now, plaintexts)
            return
        peer, keypair, first = run
        last = first + count - 1
        plain_size = segment_size - _TRANSPORT_OVERHEAD_BYTES
        last_plain = last_size - _TRANSPORT_OVERHEAD_BYTES
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
            self._deliver_rows(
                peer, keypair, buffer, segment_size, first, failed, source, now, plaintexts
            )
            return
        keypair.replay.update_run(first, last)
        self._received_transport(peer, keypair, source, len(buffer), True, now)
        if self.merges_for_tun and coalesce_rows is not None:
            merged = coalesce_rows(plaintexts, plain_size, count, last_plain)
            if merged is not None:
                # One flow's segments, headers equal but for what differs segment to
                # segment: the first one's verdict is every one's.
                if self._admitted(peer, plaintexts[:plain_size], now, count) is not None:
                    self.tun_writes.append(merged)
                return
        totals = _row_totals(plain_size, count).unpack_from(plaintexts, _IPV4_TOTAL_LENGTH)
        if (
            min(totals) >= _IPV4_MIN_BYTES
            and max(totals) <= plain_size
            and totals[-1] <= last_plain
            and self._rows_alike(plaintexts, count, plain_size)
            and self._routes.lookup(plaintexts[_IPV4_SOURCE_OFFSET:_IPV4_DESTINATION_OFFSET])
            is peer
            and (
                peer.packet_filter is None
                or peer.packet_filter.passes_rows(plaintexts, count, plain_size)
            )
        ):
            starts = range(0, count * plain_size, plain_size)
            self.to_tun.extend(
                [plaintexts[at : at + total] for at, total in zip(starts, totals, strict=True)]
            )
            return
        for row in range(count):
            size = plain_size if row < count - 1 else last_plain
            self._deliver(peer, plaintexts[row * plain_size : row * plain_size + size], now)

    def _rows_alike(self, plaintexts: memoryview, count: int, plain_size: int) -> bool:
        """Whether the packets of a decrypted batch (one per `plain_size` bytes) are all
        plain IPv4 from the first one's source, addressed to this node (or the device
        takes any destination).

        Each byte that must agree is read down the rows as one strided copy and compared
        with the first row's byte repeated: a few C-level scans, not a loop per packet.
        """
        end = count * plain_size
        if plaintexts[0:end:plain_size].tobytes() != _IPV4_PLAIN_FIRST_BYTES[:count]:
            return False
        agreeing = list(_IPV4_SOURCE_BYTES)
        if self.local_addresses is not None:
            agreeing += _IPV4_DESTINATION_BYTES
            destination = plaintexts[_IPV4_DESTINATION_OFFSET : _IPV4_DESTINATION_OFFSET + 4]
            if self._local_ipv4 is None or destination != self._local_ipv4:
                return False
        for offset in agreeing:
            column = plaintexts[offset:end:plain_size].tobytes()
            if column.count(column[0]) != count:
                return False
        return True

    def _segments_run(
        self, buffer: memoryview, segment_size: int, count: int, last_size: int, now: float
    ) -> tuple[Peer, Keypair, int] | None:
        """The peer, session and first counter of a GRO receive that `receive_segments`
        can take at once: enough datagrams, each a transport message of one session that
        takes data now, with consecutive counters all newer than any seen."""
        if count < _VECTOR_MIN_DATAGRAMS or last_size < _VECTOR_MIN_DATAGRAM_BYTES:
            return None
        fields = _row_headers(segment_size, count).unpack_from(buffer)
        headers, counters = fields[0::2], fields[1::2]
        first = counters[0]
        if (
            headers[0] & _TYPE_MASK != MESSAGE_TRANSPORT
            or headers.count(headers[0]) != count
            or counters != tuple(range(first, first + count))
            or first + count > REJECT_AFTER_MESSAGES
        ):
            return None
        run = self._receive_run(headers[0] >> _INDEX_SHIFT, now)
        if isinstance(run, DropReason) or run[1] is run[0].next or first <= run[1].replay.newest:
            return None
        return run[0], run[1], first

    def _deliver_rows(
        self,
        peer: Peer,
        keypair: Keypair,
        buffer: memoryview,
        segment_size: int,
        first: int,
        failed: list[int],
        source: PeerEndpoint,
        now: float,
        plaintexts: memoryview,
    ) -> None:
        """The rare end of `receive_segments`: some datagrams did not authenticate."""
        self.drops[DropReason.DECRYPT_FAILED] += len(failed)
        replay = keypair.replay
        plain_size = segment_size - _TRANSPORT_OVERHEAD_BYTES
        received = 0
        skip = set(failed)
        for row, datagram in enumerate(split_coalesced(buffer, segment_size)):
            if row in skip or not replay.update(first + row):
                continue
            received += len(datagram)
            offset = row * plain_size
            self._deliver(
                peer, plaintexts[offset : offset + len(datagram) - _TRANSPORT_OVERHEAD_BYTES], now
            )
        if received:
            self._received_transport(peer, keypair, source, received, True, now)

    def _deliver(self, peer: Peer, plaintext: BytesLike, now: float) -> None:
        """Queue a decrypted packet of `peer` for the TUN if it is IP from its allowed IPs."""
        packet = self._admitted(peer, plaintext, now)
        if packet is not None:
            self.to_tun.append(packet)

    def _admitted(
        self, peer: Peer, plaintext: BytesLike, now: float, count: int = 1
    ) -> BytesLike | None:
        """The IP packet at the start of `plaintext` if it is one `peer` may send us (from
        its allowed IPs, to us, past its filter); else None, the drop counted `count`
        times (for packets that share this one's verdict)."""
        addresses = packet_addresses(plaintext)
        if addresses is None:
            reason = DropReason.NOT_IP
        elif self._routes.lookup(addresses[0]) is not peer:
            reason = DropReason.SOURCE_NOT_ALLOWED
        elif self.local_addresses is not None and addresses[1] not in self.local_addresses:
            reason = DropReason.DESTINATION_NOT_LOCAL
        else:
            packet = plaintext[: addresses[2]]
            if peer.packet_filter is None:
                return packet
            refused = peer.packet_filter.judge(packet, now)
            if refused is None:
                return packet
            reason = DropReason(refused)
            peer.policy_denied += count
        self.drops[reason] += count
        return None

    def _receive_run(self, index: int, now: float) -> tuple[Peer, Keypair] | DropReason:
        """The peer and session of a receiver index, or why its messages are dropped.
        A session still waiting for its first message takes them too: the end of the
        run (`_received_transport`) makes it the current one."""
        peer, keypair = self._by_index.get(index, (None, None))
        if peer is None or not isinstance(keypair, Keypair):
            return DropReason.UNKNOWN_INDEX
        if not keypair.can_receive(now):
            return DropReason.KEY_EXPIRED
        return peer, keypair

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
        self._authenticated_from(peer, source, now, answered=data)
        if data and source == peer.endpoint:
            peer.last_data_received_s = now
        if keypair is peer.next:
            self._retire_keypair(peer, peer.previous, now)
            peer.previous = peer.current
            peer.current = keypair
            peer.next = None
            self._handshake_complete(peer, now, initiator=False)
            self._send_staged(peer, now)
        timers = peer.timers
        timers.new_handshake = None
        self._arm_persistent_keepalive(peer, now)
        if (
            keypair is peer.current
            and keypair.is_initiator
            and now - keypair.created_s > REKEY_ON_RECEIVE_AGE_S
        ):
            self._send_initiation(peer, now, is_retry=False)
        if data and timers.send_keepalive is None:
            timers.send_keepalive = self._arm(now + KEEPALIVE_TIMEOUT_S)

    def _under_load(self, now: float) -> bool:
        if now - self._handshakes_window_start_s >= 1.0:
            self._handshakes_window_start_s = now
            self._handshakes_in_window = 0
        self._handshakes_in_window += 1
        if self._handshakes_in_window > UNDER_LOAD_HANDSHAKES_PER_S:
            self._under_load_until_s = now + UNDER_LOAD_HOLD_S
        return now < self._under_load_until_s

    def _check_handshake_macs(
        self, data: bytes, sender_index: int, source: PeerEndpoint, now: float
    ) -> bool:
        """mac1, and mac2 when under load; answers a cookie reply when mac2 is missing."""
        if not self._cookie_checker.check_mac1(data):
            self.drops[DropReason.BAD_MAC1] += 1
            return False
        if self._under_load(now):
            source_key = source_bytes(source)
            if not self._cookie_checker.check_mac2(data, source_key, now):
                reply = self._cookie_checker.create_reply(data, sender_index, source_key, now)
                self.outgoing.append((reply, source))
                self.drops[DropReason.COOKIE_REQUIRED] += 1
                return False
        return True

    def _receive_initiation(self, data: bytes, source: PeerEndpoint, now: float) -> None:
        message = parse_initiation(data)
        if not self._check_handshake_macs(data, message.sender, source, now):
            return
        state = consume_initiation(self.local, message)
        peer = self._peers.get(state.remote_static)
        if peer is None:
            self.drops[DropReason.UNKNOWN_PEER] += 1
            return
        if state.timestamp <= peer.greatest_timestamp:
            self.drops[DropReason.REPLAYED_INITIATION] += 1
            return
        if (
            peer.last_initiation_received_s is not None
            and now - peer.last_initiation_received_s < HANDSHAKE_INITIATION_RATE_S
        ):
            self.drops[DropReason.HANDSHAKE_RATE] += 1
            return
        peer.greatest_timestamp = state.timestamp
        peer.last_initiation_received_s = now
        peer.rx_bytes += len(data)
        self._authenticated_from(peer, source, now, answered=False, initiation=True)
        index = self._new_index()
        response, keys = create_response(
            self.local, state, peer.preshared_key, index, generate_private_key()
        )
        peer.cookie_generator.add_macs(response, now)
        keypair = Keypair(keys, now)
        self._retire_keypair(peer, peer.next, now)
        self._retire_keypair(peer, peer.previous, now)
        peer.previous = None
        peer.next = keypair
        self._by_index[index] = (peer, keypair)
        peer.timers.new_handshake = None
        peer.timers.zero_key_material = self._arm(now + ZERO_KEYS_AFTER_S)
        self._send_handshake_message(peer, bytes(response), now)

    def _receive_response(self, data: bytes, source: PeerEndpoint, now: float) -> None:
        message = parse_response(data)
        if not self._check_handshake_macs(data, message.sender, source, now):
            return
        peer, state = self._by_index.get(message.receiver, (None, None))
        if peer is None or not isinstance(state, InitiatorState):
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        keys = consume_response(self.local, state, peer.preshared_key, message)
        del self._by_index[message.receiver]
        peer.handshake = None
        peer.rx_bytes += len(data)
        self._authenticated_from(peer, source, now, answered=True)
        keypair = Keypair(keys, now)
        self._by_index[keys.local_index] = (peer, keypair)
        self._retire_keypair(peer, peer.previous, now)
        if peer.next is not None:
            peer.previous = peer.next
            self._retire_keypair(peer, peer.current, now)
            peer.next = None
        else:
            peer.previous = peer.current
        peer.current = keypair
        peer.timers.new_handshake = None
        peer.timers.zero_key_material = self._arm(now + ZERO_KEYS_AFTER_S)
        self._arm_persistent_keepalive(peer, now)
        self._handshake_complete(peer, now, initiator=True)
        if not self._send_staged(peer, now):
            self._send_keepalive(peer, now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        message = parse_cookie_reply(data)
        entry = self._by_index.get(message.receiver)
        if entry is None:
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        peer = entry[0]
        if not peer.cookie_generator.consume_reply(data, now):
            self.drops[DropReason.BAD_COOKIE] += 1

    # -- session bookkeeping -------------------------------------------------------

    def _authenticated_from(
        self,
        peer: Peer,
        source: PeerEndpoint,
        now: float,
        *,
        answered: bool,
        initiation: bool = False,
    ) -> None:
        """An authenticated packet arrived: the endpoint roams to its source (unless the
        peer's `Roaming` keeps it). Data or a handshake response on the current path
        answers what we sent; a keepalive or an initiation proves only the way towards us."""
        if peer.endpoint != source and (
            peer.endpoint is None or self._may_roam(peer, source, now, initiation)
        ):
            peer.endpoint = source
            self.events.append(EndpointChanged(peer.public_key, source))
        if source == peer.endpoint:
            peer.last_received_s = now
            if answered:
                peer.unanswered_since_s = None

    def _may_roam(self, peer: Peer, source: PeerEndpoint, now: float, initiation: bool) -> bool:
        """Whether the peer's `Roaming` lets an authenticated packet from `source` (a
        handshake initiation, or not) take its endpoint."""
        roaming = self._roaming.get(peer.public_key)
        if roaming is None:
            return True
        if not isinstance(source, RelayEndpoint):
            return roaming.to_udp
        if roaming.to_relay_after_s is None or source.peer != peer.public_key:
            return False
        last = peer.last_received_s
        return initiation or last is None or now - last > roaming.to_relay_after_s

    def _handshake_complete(self, peer: Peer, now: float, *, initiator: bool) -> None:
        peer.timers.retransmit_handshake = None
        peer.handshake_attempts = 0
        peer.last_handshake_s = now
        self.events.append(HandshakeCompleted(peer.public_key, initiator))

    def _send_staged(self, peer: Peer, now: float) -> bool:
        """Send the packets queued during the handshake; True if there were any."""
        keypair = peer.current
        if not peer.staged or keypair is None or peer.endpoint is None:
            return False
        staged = list(peer.staged)
        peer.staged.clear()
        self.send_packets(staged, now)
        return True

    def _forget_keypair(self, keypair: Keypair | None) -> None:
        """Drop a keypair's index so that nothing is accepted for it any more."""
        if keypair is None:
            return
        entry = self._by_index.get(keypair.local_index)
        if entry is not None and entry[1] is keypair:
            del self._by_index[keypair.local_index]

    def _retire_keypair(self, peer: Peer, keypair: Keypair | None, now: float) -> None:
        """Take a keypair that a rotation pushes out of its slot for RETIRED_KEYPAIR_S
        more, for inbound packets only (at most MAX_RETIRED_KEYPAIRS per peer)."""
        if keypair is None:
            return
        peer.retired.append((now + RETIRED_KEYPAIR_S, keypair))
        if len(peer.retired) > MAX_RETIRED_KEYPAIRS:
            self._forget_keypair(peer.retired.popleft()[1])
        peer.timers.forget_retired = self._arm(peer.retired[0][0])

    def _forget_retired(self, peer: Peer, now: float) -> None:
        while peer.retired and peer.retired[0][0] <= now:
            self._forget_keypair(peer.retired.popleft()[1])
        peer.timers.forget_retired = self._arm(peer.retired[0][0]) if peer.retired else None

    def _zero_keys(self, peer: Peer) -> None:
        for keypair in peer.keypairs():
            self._forget_keypair(keypair)
        if peer.handshake is not None:
            self._by_index.pop(peer.handshake.sender_index, None)
        peer.current = peer.previous = peer.next = None
        peer.retired.clear()
        peer.timers.forget_retired = None
        peer.handshake = None
        peer.timers.retransmit_handshake = None

    # -- timers --------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest deadline of any peer's timer, or None when all are idle (a scan
        of every peer: `wake_by` is what to ask after each input)."""
        deadlines = [t for p in self._peers.values() if (t := p.timers.earliest()) is not None]
        return min(deadlines) if deadlines else None

    def wake_by(self) -> float | None:
        """When `handle_timers` must run at the latest: never after `next_timer()`, maybe
        before it (a timer since stopped or moved later counts until timers are handled),
        and read without looking at any peer, however many there are."""
        return self._wake_by

    def _arm(self, deadline: float) -> float:
        """`deadline`, about to be a timer's: `wake_by` stays no later than it."""
        if self._wake_by is None or deadline < self._wake_by:
            self._wake_by = deadline
        return deadline

    def handle_timers(self, now: float) -> None:
        """Fire every timer whose deadline has passed."""
        self._fire_timers(now)
        self._wake_by = self.next_timer()

    def _fire_timers(self, now: float) -> None:
        for peer in list(self._peers.values()):
            timers = peer.timers
            if timers.retransmit_handshake is not None and timers.retransmit_handshake <= now:
                timers.retransmit_handshake = None
                self._retransmit_handshake(peer, now)
            if timers.send_keepalive is not None and timers.send_keepalive <= now:
                timers.send_keepalive = None
                self._send_keepalive(peer, now)
            if timers.new_handshake is not None and timers.new_handshake <= now:
                timers.new_handshake = None
                self._send_initiation(peer, now, is_retry=False)
            if timers.zero_key_material is not None and timers.zero_key_material <= now:
                timers.zero_key_material = None
                self._zero_keys(peer)
                self.events.append(KeysZeroed(peer.public_key))
            if timers.persistent_keepalive is not None and timers.persistent_keepalive <= now:
                timers.persistent_keepalive = None
                self._send_keepalive(peer, now)
            if timers.forget_retired is not None and timers.forget_retired <= now:
                self._forget_retired(peer, now)

    def _retransmit_handshake(self, peer: Peer, now: float) -> None:
        peer.handshake_attempts += 1
        if peer.handshake_attempts >= MAX_HANDSHAKE_ATTEMPTS:
            if peer.handshake is not None:
                self._by_index.pop(peer.handshake.sender_index, None)
                peer.handshake = None
            self.drops[DropReason.HANDSHAKE_GAVE_UP] += len(peer.staged)
            peer.staged.clear()
            if peer.timers.zero_key_material is None:
                peer.timers.zero_key_material = self._arm(now + ZERO_KEYS_AFTER_S)
            self.events.append(HandshakeGaveUp(peer.public_key))
            return
        self._send_initiation(peer, now, is_retry=True)
