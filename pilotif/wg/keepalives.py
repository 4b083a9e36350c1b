"""The timer rules of sending transport messages (whitepaper section 6): keepalives
(passive, persistent and probes), the new-handshake timer data starts, and rekeying a
session that is old or has sent too much."""

import struct
from typing import Final

from pilotif.wg.alarm import Alarm
from pilotif.wg.constants import (
    KEEPALIVE_TIMEOUT_S,
    MESSAGE_TRANSPORT,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME_S,
    REKEY_TIMEOUT_S,
)
from pilotif.wg.events import PeerEndpoint
from pilotif.wg.handshakes import Handshakes
from pilotif.wg.messages import TRANSPORT_HEADER
from pilotif.wg.outbox import Outbox
from pilotif.wg.peer import Keypair, Peer

NONCE: Final = struct.Struct("<4xQ")
"""The AEAD nonce of a transport counter: four zero bytes, then the counter."""


class Keepalives:
    """Keepalives and the bookkeeping of transport messages sent."""

    def __init__(self, alarm: Alarm, outbox: Outbox, handshakes: Handshakes) -> None:
        self._alarm = alarm
        self._outbox = outbox
        self._handshakes = handshakes

    def send(self, peer: Peer, now: float) -> None:
        """A keepalive to the peer's endpoint, or an initiation without a session."""
        keypair = peer.current
        if peer.endpoint is None:
            return
        if keypair is not None and keypair.can_send(now):
            self.send_with(peer, keypair, now)
            self.keep_key_fresh(peer, keypair, now)
        else:
            self._handshakes.initiate(peer, now, is_retry=False)

    def send_with(
        self,
        peer: Peer,
        keypair: Keypair,
        now: float,
        endpoint: PeerEndpoint | None = None,
        *,
        plaintext: bytes = b"",
    ) -> None:
        """A transport message with nothing inside (to the peer's endpoint, or another),
        or with `plaintext` unpadded (a path MTU probe or its answer: no data either)."""
        destination = endpoint or peer.endpoint
        assert destination is not None
        counter = keypair.send_counter
        keypair.send_counter = counter + 1
        datagram = TRANSPORT_HEADER.pack(
            MESSAGE_TRANSPORT, keypair.remote_index, counter
        ) + keypair.send_aead.encrypt(NONCE.pack(counter), plaintext, None)
        self._outbox.out.datagrams.append((datagram, destination))
        self.sent(peer, len(datagram), False, now)

    def sent(self, peer: Peer, sent_bytes: int, data: bool, now: float) -> None:
        """The timers and counters of transport messages just sent (`data`: not only
        keepalives)."""
        peer.tx_bytes += sent_bytes
        if data and peer.unanswered_since_s is None:
            peer.unanswered_since_s = now
        timers = peer.timers
        timers.send_keepalive = None
        if data and timers.new_handshake is None:
            timers.new_handshake = self._alarm.arm(now + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S)
        self._alarm.arm_persistent_keepalive(peer, now)

    def keep_key_fresh(self, peer: Peer, keypair: Keypair, now: float) -> None:
        """A new handshake when the session sent REKEY_AFTER_MESSAGES or (ours) is older
        than REKEY_AFTER_TIME_S."""
        if keypair.send_counter > REKEY_AFTER_MESSAGES or (
            keypair.is_initiator and now - keypair.created_s > REKEY_AFTER_TIME_S
        ):
            self._handshakes.initiate(peer, now, is_retry=False)
