"""The state the overlay keeps per peer: keypairs, handshake in flight, timers, counters.

Timers are deadlines in the caller's clock (`now`, seconds); `None` means disarmed.
They follow the whitepaper's section 6 and wireguard-go's `device/timers.go`:

- retransmit_handshake: REKEY_TIMEOUT_S (+ jitter) after an initiation we sent;
- send_keepalive (passive keepalive): KEEPALIVE_TIMEOUT_S after data arrived, unless
  we sent something authenticated meanwhile;
- new_handshake: KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S after we sent data, unless
  something authenticated arrived meanwhile;
- zero_key_material: REJECT_AFTER_TIME_S * 3 after the last new session;
- persistent_keepalive: every PersistentKeepalive seconds of silence;
- forget_retired: when the oldest retired keypair stops being accepted.
"""

from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pilotif.packet.filter import PacketFilter
from pilotif.wg.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME_S,
)
from pilotif.wg.cookie import CookieGenerator
from pilotif.wg.events import PeerEndpoint
from pilotif.wg.handshake import InitiatorState, SessionKeys
from pilotif.wg.replay import ReplayWindow


class Keypair:
    """One session's keys in both directions, with its counters and replay window."""

    __slots__ = (
        "created_s",
        "is_initiator",
        "local_index",
        "receive_aead",
        "receive_key",
        "remote_index",
        "replay",
        "send_aead",
        "send_counter",
        "send_key",
    )

    def __init__(self, keys: SessionKeys, created_s: float) -> None:
        self.send_aead = ChaCha20Poly1305(keys.send_key)
        self.receive_aead = ChaCha20Poly1305(keys.receive_key)
        self.receive_key = keys.receive_key
        self.send_key = keys.send_key
        """The batch opener and sealer (pilotif.wg.fastpath.batch_loops) take the keys."""
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.is_initiator = keys.is_initiator
        self.created_s = created_s
        self.send_counter = 0
        self.replay = ReplayWindow()

    def can_send(self, now: float) -> bool:
        """Still inside the reject limits of time and message count."""
        return (
            now - self.created_s < REJECT_AFTER_TIME_S and self.send_counter < REJECT_AFTER_MESSAGES
        )

    def can_receive(self, now: float) -> bool:
        """Inbound packets for this keypair are still acceptable."""
        return now - self.created_s < REJECT_AFTER_TIME_S


@dataclass
class PeerTimers:
    """Deadlines of the per-peer timers; `None` means disarmed."""

    retransmit_handshake: float | None = None
    send_keepalive: float | None = None
    new_handshake: float | None = None
    zero_key_material: float | None = None
    persistent_keepalive: float | None = None
    forget_retired: float | None = None

    def earliest(self) -> float | None:
        """The next deadline of any timer."""
        armed = [
            t
            for t in (
                self.retransmit_handshake,
                self.send_keepalive,
                self.new_handshake,
                self.zero_key_material,
                self.persistent_keepalive,
                self.forget_retired,
            )
            if t is not None
        ]
        return min(armed) if armed else None


@dataclass
class Peer:
    """A WireGuard peer: its configuration and all the state our side keeps for it."""

    public_key: bytes
    preshared_key: bytes
    allowed_ips: list[IPv4Network | IPv6Network]
    endpoint: PeerEndpoint | None
    persistent_keepalive_s: int | None
    cookie_generator: CookieGenerator
    current: Keypair | None = None
    previous: Keypair | None = None
    next: Keypair | None = None
    retired: deque[tuple[float, Keypair]] = field(default_factory=deque)
    """Keypairs pushed out of the slots by a rotation, with when each stops being
    accepted (oldest first): they take inbound packets, never outbound ones."""
    handshake: InitiatorState | None = None
    handshake_attempts: int = 0
    probe_endpoints: tuple[PeerEndpoint, ...] = ()
    """Candidate paths that each initiation also goes to, beside `endpoint` (while a
    node probes them: the first answer there makes the session direct at once)."""
    last_initiation_sent_s: float | None = None
    last_initiation_received_s: float | None = None
    greatest_timestamp: bytes = b""
    last_handshake_s: float | None = None
    """When the latest session was established, in the caller's clock."""
    last_received_s: float | None = None
    """When the latest authenticated packet arrived from the peer's current endpoint."""
    last_data_received_s: float | None = None
    """When the latest data packet (not a keepalive or handshake) arrived from the peer's
    current endpoint."""
    unanswered_since_s: float | None = None
    """When we first sent data (not a keepalive) after the latest authenticated packet."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    packet_filter: PacketFilter | None = None
    """The port policy of what it sends us (None: everything passes)."""
    policy_denied: int = 0
    """Its packets the port policy refused."""
    mtu: int | None = None
    """The largest packet that reaches it (the path MTU its node probed, less the
    tunnel's overhead); None: the device's MTU."""
    too_big_sent_s: float = float("-inf")
    """When the local stack was last told a packet to it was too big."""
    staged: deque[bytes] = field(default_factory=deque)
    timers: PeerTimers = field(default_factory=PeerTimers)

    def keypairs(self) -> list[Keypair]:
        """Every keypair held, newest first, retired ones included."""
        held = [kp for kp in (self.next, self.current, self.previous) if kp is not None]
        return held + [keypair for _, keypair in reversed(self.retired)]
