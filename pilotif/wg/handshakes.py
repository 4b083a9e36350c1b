"""The handshake messages of every peer: initiations (with their retries, rate limit and
giving up), responses, cookie replies, and the under-load check that asks for cookies.

The Noise IK cryptography is `pilotif.wg.handshake`; this part decides when to send
and what an arriving handshake message does to a peer, and puts what it sends in the
device's output. Peer input is hostile: what fails a check is dropped and counted."""

import os
from collections.abc import Callable

from pilotif.packet.ip import BytesLike, packet_addresses
from pilotif.wg.alarm import Alarm
from pilotif.wg.allowed_ips import AllowedIPs
from pilotif.wg.constants import (
    HANDSHAKE_INITIATION_RATE_S,
    MAX_STAGED_PACKETS,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    REJECT_AFTER_TIME_S,
    REKEY_ATTEMPT_TIME_S,
    REKEY_TIMEOUT_JITTER_MAX_S,
    REKEY_TIMEOUT_S,
    UNDER_LOAD_HANDSHAKES_PER_S,
    UNDER_LOAD_HOLD_S,
)
from pilotif.wg.cookie import CookieChecker, source_bytes
from pilotif.wg.crypto import generate_private_key, tai64n
from pilotif.wg.drops import DropReason
from pilotif.wg.events import HandshakeCompleted, HandshakeGaveUp, PeerEndpoint
from pilotif.wg.handshake import (
    HandshakeError,
    LocalIdentity,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from pilotif.wg.messages import MessageError, parse_cookie_reply, parse_initiation, parse_response
from pilotif.wg.outbox import Outbox
from pilotif.wg.peer import Peer
from pilotif.wg.roaming import Roamer
from pilotif.wg.sessions import Sessions

MAX_HANDSHAKE_ATTEMPTS = int(REKEY_ATTEMPT_TIME_S / REKEY_TIMEOUT_S)
"""Initiations sent for one handshake before we give up (whitepaper 6.4)."""
ZERO_KEYS_AFTER_S = REJECT_AFTER_TIME_S * 3
"""A peer's keys are zeroed this long after its latest new session."""
_LOAD_WINDOW_S = 1.0
"""The window in which handshakes are counted for the under-load check."""


class Handshakes:
    """The handshakes of the peers in `peers` (the device's table, by static key)."""

    def __init__(
        self,
        local: LocalIdentity,
        peers: dict[bytes, Peer],
        parts: tuple[Sessions, Roamer, Alarm, Outbox],
        drops: dict[DropReason, int],
        *,
        wall_offset_s: float = 0.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._local = local
        self._peers = peers
        self._sessions, self._roamer, self._alarm, self._outbox = parts
        self._drops = drops
        self.wall_offset_s = wall_offset_s
        """Added to `now` for the TAI64N timestamp of initiations (Unix time)."""
        self._random_bytes = random_bytes
        self._cookie_checker = CookieChecker(local, random_bytes)
        self._window_start_s = 0.0
        self._in_window = 0
        self._under_load_until_s = -1.0

    # -- sending -------------------------------------------------------------------

    def initiate(self, peer: Peer, now: float, *, is_retry: bool) -> None:
        """Send an initiation to the peer (and its probe endpoints) unless one is in
        flight (a retry always goes), the last went less than REKEY_TIMEOUT_S ago (then
        a retry is armed for packets waiting on it), or it has no endpoint."""
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
                peer.timers.retransmit_handshake = self._alarm.arm(
                    peer.last_initiation_sent_s + REKEY_TIMEOUT_S
                )
            return
        if peer.endpoint is None:
            return
        self._sessions.forget_handshake(peer)
        index = self._sessions.new_index()
        message, state = create_initiation(
            self._local,
            peer.public_key,
            index,
            tai64n(now + self.wall_offset_s),
            generate_private_key(),
        )
        peer.cookie_generator.add_macs(message, now)
        self._sessions.start_handshake(peer, index, state)
        peer.last_initiation_sent_s = now
        self._send(peer, bytes(message), now)
        for endpoint in peer.probe_endpoints:
            if endpoint != peer.endpoint:
                self._outbox.out.datagrams.append((bytes(message), endpoint))
                peer.tx_bytes += len(message)
        jitter = (
            int.from_bytes(self._random_bytes(2), "little") / 0xFFFF * REKEY_TIMEOUT_JITTER_MAX_S
        )
        peer.timers.retransmit_handshake = self._alarm.arm(now + REKEY_TIMEOUT_S + jitter)

    def restart(self, peer: Peer, now: float) -> None:
        """A new initiation now, even if the last is recent; one in flight is sent again
        now, as its retry (`Device.rehandshake`)."""
        peer.last_initiation_sent_s = None
        if peer.handshake is not None and peer.timers.retransmit_handshake is not None:
            peer.timers.retransmit_handshake = None
            self.retransmit(peer, now)
        else:
            self.initiate(peer, now, is_retry=False)

    def stage_routed(self, routes: AllowedIPs[Peer], packet: BytesLike, now: float) -> None:
        """A packet without a session to seal it with now: dropped (not IP, no route in
        `routes`, no endpoint), or queued for the handshake this starts."""
        addresses = packet_addresses(packet)
        if addresses is None:
            self._drops[DropReason.NOT_IP] += 1
            return
        peer = routes.lookup(addresses[1])
        if peer is None:
            self._drops[DropReason.NO_ROUTE] += 1
            return
        if peer.endpoint is None:
            self._drops[DropReason.NO_ENDPOINT] += 1
            return
        self.stage(peer, packet, now)

    def stage(self, peer: Peer, packet: BytesLike, now: float) -> None:
        """Queue a packet (at most MAX_STAGED_PACKETS, the oldest dropped) until the
        handshake this starts gives the peer a session."""
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self._drops[DropReason.QUEUE_FULL] += 1
        peer.staged.append(bytes(packet))
        self.initiate(peer, now, is_retry=False)

    def retransmit(self, peer: Peer, now: float) -> None:
        """The retransmit timer fired: the initiation again, or give up after
        MAX_HANDSHAKE_ATTEMPTS (the packets waiting are dropped)."""
        peer.handshake_attempts += 1
        if peer.handshake_attempts >= MAX_HANDSHAKE_ATTEMPTS:
            self._sessions.forget_handshake(peer)
            self._drops[DropReason.HANDSHAKE_GAVE_UP] += len(peer.staged)
            peer.staged.clear()
            if peer.timers.zero_key_material is None:
                peer.timers.zero_key_material = self._alarm.arm(now + ZERO_KEYS_AFTER_S)
            self._outbox.out.events.append(HandshakeGaveUp(peer.public_key))
            return
        self.initiate(peer, now, is_retry=True)

    def complete(self, peer: Peer, now: float, *, initiator: bool) -> None:
        """A new session is in use: the handshake is over."""
        peer.timers.retransmit_handshake = None
        peer.handshake_attempts = 0
        peer.last_handshake_s = now
        self._outbox.out.events.append(HandshakeCompleted(peer.public_key, initiator))

    def _send(self, peer: Peer, message: bytes, now: float) -> None:
        assert peer.endpoint is not None
        self._outbox.out.datagrams.append((message, peer.endpoint))
        peer.tx_bytes += len(message)
        peer.timers.send_keepalive = None
        self._alarm.arm_persistent_keepalive(peer, now)

    # -- receiving -----------------------------------------------------------------

    def receive(self, data: BytesLike, source: PeerEndpoint, now: float) -> Peer | None:
        """An initiation, response or cookie reply (anything else is malformed); the
        peer whose initiation this answered (its session is current now: the caller
        sends what waited for it), if it was a valid response."""
        kind = data[0]
        try:
            if kind == MESSAGE_INITIATION:
                self._receive_initiation(bytes(data), source, now)
            elif kind == MESSAGE_RESPONSE:
                return self._receive_response(bytes(data), source, now)
            elif kind == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(bytes(data), now)
            else:
                self._drops[DropReason.MALFORMED] += 1
        except MessageError as error:
            self._drops[error.reason] += 1
        except HandshakeError as error:
            self._drops[error.reason] += 1
        return None

    def _under_load(self, now: float) -> bool:
        if now - self._window_start_s >= _LOAD_WINDOW_S:
            self._window_start_s = now
            self._in_window = 0
        self._in_window += 1
        if self._in_window > UNDER_LOAD_HANDSHAKES_PER_S:
            self._under_load_until_s = now + UNDER_LOAD_HOLD_S
        return now < self._under_load_until_s

    def _check_macs(self, data: bytes, sender_index: int, source: PeerEndpoint, now: float) -> bool:
        """mac1, and mac2 when under load; answers a cookie reply when mac2 is missing."""
        if not self._cookie_checker.check_mac1(data):
            self._drops[DropReason.BAD_MAC1] += 1
            return False
        if self._under_load(now):
            source_key = source_bytes(source)
            if not self._cookie_checker.check_mac2(data, source_key, now):
                reply = self._cookie_checker.create_reply(data, sender_index, source_key, now)
                self._outbox.out.datagrams.append((reply, source))
                self._drops[DropReason.COOKIE_REQUIRED] += 1
                return False
        return True

    def _receive_initiation(self, data: bytes, source: PeerEndpoint, now: float) -> None:
        message = parse_initiation(data)
        if not self._check_macs(data, message.sender, source, now):
            return
        state = consume_initiation(self._local, message)
        peer = self._peers.get(state.remote_static)
        if peer is None:
            self._drops[DropReason.UNKNOWN_PEER] += 1
            return
        if state.timestamp <= peer.greatest_timestamp:
            self._drops[DropReason.REPLAYED_INITIATION] += 1
            return
        if (
            peer.last_initiation_received_s is not None
            and now - peer.last_initiation_received_s < HANDSHAKE_INITIATION_RATE_S
        ):
            self._drops[DropReason.HANDSHAKE_RATE] += 1
            return
        peer.greatest_timestamp = state.timestamp
        peer.last_initiation_received_s = now
        peer.rx_bytes += len(data)
        self._roamer.authenticated_from(peer, source, now, answered=False, initiation=True)
        index = self._sessions.new_index()
        response, keys = create_response(
            self._local, state, peer.preshared_key, index, generate_private_key()
        )
        peer.cookie_generator.add_macs(response, now)
        self._sessions.responded(peer, keys, index, now)
        peer.timers.new_handshake = None
        peer.timers.zero_key_material = self._alarm.arm(now + ZERO_KEYS_AFTER_S)
        self._send(peer, bytes(response), now)

    def _receive_response(self, data: bytes, source: PeerEndpoint, now: float) -> Peer | None:
        message = parse_response(data)
        if not self._check_macs(data, message.sender, source, now):
            return None
        initiated = self._sessions.initiated(message.receiver)
        if initiated is None:
            self._drops[DropReason.UNKNOWN_INDEX] += 1
            return None
        peer, state = initiated
        keys = consume_response(self._local, state, peer.preshared_key, message)
        peer.rx_bytes += len(data)
        self._roamer.authenticated_from(peer, source, now, answered=True)
        self._sessions.completed(peer, message.receiver, keys, now)
        peer.timers.new_handshake = None
        peer.timers.zero_key_material = self._alarm.arm(now + ZERO_KEYS_AFTER_S)
        self._alarm.arm_persistent_keepalive(peer, now)
        self.complete(peer, now, initiator=True)
        return peer

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        message = parse_cookie_reply(data)
        peer = self._sessions.peer_of(message.receiver)
        if peer is None:
            self._drops[DropReason.UNKNOWN_INDEX] += 1
            return
        if not peer.cookie_generator.consume_reply(data, now):
            self._drops[DropReason.BAD_COOKIE] += 1
