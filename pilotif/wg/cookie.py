"""mac1, mac2 and cookie replies: WireGuard's DoS mitigation (whitepaper 5.4.4 and 5.4.7).

Every handshake message ends with mac1 (keyed by the receiver's public key, so
only messages meant for us pass a cheap check) and mac2 (keyed by a cookie the
responder handed out, binding the sender to its source address). A responder
under load answers handshakes that lack a valid mac2 with a cookie reply
instead of doing the expensive Diffie-Hellman work.
"""

import hmac as _hmac
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Final, Literal

from cryptography.exceptions import InvalidTag

from pilotif.wg.constants import COOKIE_REFRESH_TIME_S, COOKIE_REPLY_SIZE, MESSAGE_COOKIE_REPLY
from pilotif.wg.crypto import (
    HASH_SIZE,
    MAC_SIZE,
    XAEAD_NONCE_SIZE,
    BytesLike,
    hash_,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)
from pilotif.wg.crypto import hmac as keyed_hash
from pilotif.wg.events import PeerEndpoint, RelayEndpoint
from pilotif.wg.handshake import LABEL_COOKIE, LABEL_MAC1, LocalIdentity
from pilotif.wg.messages import (
    COOKIE_REPLY,
    CookieReplyMessage,
    MessageError,
    parse_cookie_reply,
)

# mac1 and mac2 are the last two 16-byte fields of both handshake messages.
_MAC1_START: Final = -2 * MAC_SIZE
_MAC2_START: Final = -MAC_SIZE
_PORT_SIZE: Final = 2
# The initiator stops using a cookie this long before the responder's secret
# can have changed (Linux: COOKIE_SECRET_LATENCY).
_COOKIE_EXPIRY_MARGIN_S: Final = 5.0
COOKIE_LIFETIME_S: Final = COOKIE_REFRESH_TIME_S - _COOKIE_EXPIRY_MARGIN_S
"""How long an initiator uses a cookie (WireGuard's rule)."""
RENEWED_COOKIE_LIFETIME_S: Final = 2 * COOKIE_REFRESH_TIME_S - _COOKIE_EXPIRY_MARGIN_S
"""How long a sender uses a cookie of a RenewingCookieChecker (it is renewed before)."""
RENEWAL_SPREAD_S: Final = 80.0
"""A RenewingCookieChecker renews the cookies of the secret it replaced over this long
after the replacement, each sender at its own time (a keyed hash of its source): a
fleet's renewals come at a steady rate, not with every sender's next message at once.
A cookie lapses RENEWED_COOKIE_LIFETIME_S after it came, at least 115 s after the
replacement: a sender that sends every 35 s or more often is renewed before."""
_SPREAD_STEPS: Final = 1 << 16
_SECRETS_LABEL: Final = b"pilotif cookie secrets"
_EPOCH_BYTES: Final = 8
_NO_MAC: Final = bytes(MAC_SIZE)
CookieAge = Literal["current", "previous", "due"]


def source_bytes(source: PeerEndpoint) -> bytes:
    """What a cookie is bound to: the packed address (4 or 16 bytes) and big-endian port
    of a UDP source, or the peer key (32 bytes) of a datagram that came through the relay."""
    if isinstance(source, RelayEndpoint):
        return source.peer
    host, port = source
    return packed_address(host) + port.to_bytes(_PORT_SIZE, "big")


def packed_address(host: str) -> bytes:
    """The 4 or 16 bytes of an address as the socket module writes it (inet_pton: a
    tenth of what `ipaddress` takes, paid by every control message at the registry)."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        # A scoped IPv6 address (fe80::1%eth0) and whatever else `ipaddress` parses.
        return ipaddress.ip_address(host).packed


def _mac2_fits(cookie: bytes, message: BytesLike) -> bool:
    """Whether the message's mac2 is keyed by `cookie`."""
    expected = mac(cookie, message[:_MAC2_START])
    return _hmac.compare_digest(expected, message[_MAC2_START:])


class CookieChecker:
    """The responder's side, one per device (and one in the registry, whose replies have
    `reply_type` 0x54): checks mac1/mac2 and writes cookie replies."""

    def __init__(
        self,
        local: LocalIdentity,
        random_bytes: Callable[[int], bytes] = os.urandom,
        reply_type: int = MESSAGE_COOKIE_REPLY,
    ) -> None:
        self._reply_type = reply_type
        self._mac1_key = local.mac1_key
        self._cookie_key = local.cookie_key
        self._random_bytes = random_bytes
        self._secret = b""
        self._secret_created_at: float | None = None

    def check_mac1(self, message: BytesLike) -> bool:
        """Whether the message's mac1 is keyed by our public key."""
        expected = mac(self._mac1_key, message[:_MAC1_START])
        return _hmac.compare_digest(expected, message[_MAC1_START:_MAC2_START])

    def check_mac2(self, message: BytesLike, source: bytes, now: float) -> bool:
        """Whether the message's mac2 uses the current cookie of `source`."""
        return self._secret_is_fresh(now) and _mac2_fits(self._cookie(source), message)

    def create_reply(
        self, message: BytesLike, receiver_index: int, source: bytes, now: float
    ) -> bytes:
        """The 64-byte cookie reply to a handshake message (whose sender is `receiver_index`)."""
        if not self._secret_is_fresh(now):
            self._secret = self._random_bytes(HASH_SIZE)
            self._secret_created_at = now
        nonce = self._random_bytes(XAEAD_NONCE_SIZE)
        encrypted_cookie = xaead_encrypt(
            self._cookie_key, nonce, self._cookie(source), message[_MAC1_START:_MAC2_START]
        )
        reply = bytearray(COOKIE_REPLY_SIZE)
        COOKIE_REPLY.pack_into(reply, 0, self._reply_type, receiver_index, nonce, encrypted_cookie)
        return bytes(reply)

    def _secret_is_fresh(self, now: float) -> bool:
        created_at = self._secret_created_at
        return created_at is not None and now - created_at <= COOKIE_REFRESH_TIME_S

    def _cookie(self, source: bytes) -> bytes:
        return mac(self._secret, source)


class RenewingCookieChecker(CookieChecker):
    """The registry's and the relays' checker (they ask every message for mac2, not only
    under load): a cookie stays good for a second COOKIE_REFRESH_TIME_S after its secret
    was replaced, and `cookie_age` tells the caller when to hand such a sender a fresh
    one with its answer (its own time within RENEWAL_SPREAD_S after the replacement). A
    fleet's cookies then never lapse all at once: with WireGuard's rule every node's
    next message after a rotation (all 100,000 within a heartbeat interval, every two
    minutes) paid a cookie round trip, and renewing each with that message still made
    100,000 renewals within 20 s.

    Its secrets are not drawn at random: each is derived from our private key and the
    wall clock's epoch of COOKIE_REFRESH_TIME_S (the current epoch's and the one before
    are good). So a registry restarted within a few minutes, or a replica with the same
    key, takes the cookies its nodes hold: with random secrets each returning node paid
    a cookie round trip (two datagrams and a cookie reply each, 100,000 after an
    outage)."""

    def __init__(
        self,
        local: LocalIdentity,
        random_bytes: Callable[[int], bytes] = os.urandom,
        reply_type: int = MESSAGE_COOKIE_REPLY,
    ) -> None:
        super().__init__(local, random_bytes, reply_type)
        self._secrets_key = hash_(_SECRETS_LABEL, local.private_key)
        self._previous = b""
        """The secret of the epoch before the current one."""

    def check_mac2(self, message: BytesLike, source: bytes, now: float) -> bool:
        """Whether the message's mac2 uses a cookie of `source` from the current secret or
        the one before it."""
        return self.cookie_age(message, source, now) is not None

    def cookie_age(self, message: BytesLike, source: bytes, now: float) -> CookieAge | None:
        """Which secret the cookie of the message's mac2 came from (None: neither, or not
        a cookie of `source`): one from the previous secret is good, and "due" for
        renewal once the secret was replaced at least `source`'s share of
        RENEWAL_SPREAD_S ago."""
        self._rotate(now)
        if super().check_mac2(message, source, now):
            return "current"
        cookie = mac(self._previous, source)
        if not _mac2_fits(cookie, message):
            return None
        share = int.from_bytes(cookie[:2], "big") / _SPREAD_STEPS
        assert self._secret_created_at is not None, "_rotate set the epoch's start"
        replaced_s = now - self._secret_created_at
        return "due" if replaced_s > share * RENEWAL_SPREAD_S else "previous"

    def create_reply(
        self, message: BytesLike, receiver_index: int, source: bytes, now: float
    ) -> bytes:
        self._rotate(now)
        return super().create_reply(message, receiver_index, source, now)

    def _rotate(self, now: float) -> None:
        """The secrets of `now`'s epoch and of the one before, once per epoch."""
        epoch = int(now // COOKIE_REFRESH_TIME_S)
        start = epoch * COOKIE_REFRESH_TIME_S
        if start == self._secret_created_at:
            return
        self._secret = self._epoch_secret(epoch)
        self._previous = self._epoch_secret(epoch - 1)
        self._secret_created_at = start

    def _epoch_secret(self, epoch: int) -> bytes:
        return keyed_hash(self._secrets_key, epoch.to_bytes(_EPOCH_BYTES, "big", signed=True))


class CookieGenerator:
    """The initiator's side, one per peer: writes mac1/mac2 and takes in cookie replies."""

    def __init__(self, remote_static: bytes, lifetime_s: float = COOKIE_LIFETIME_S) -> None:
        self._lifetime_s = lifetime_s
        """How long a cookie is used after it came."""
        self._mac1_key = hash_(LABEL_MAC1, remote_static)
        self._cookie_key = hash_(LABEL_COOKIE, remote_static)
        self._last_mac1: bytes | None = None
        self._cookie = b""
        self._cookie_received_at: float | None = None

    def add_macs(self, message: bytearray, now: float) -> None:
        """Fill mac1, and mac2 when we hold a cookie that is still valid (else zeros)."""
        mac1 = mac(self._mac1_key, message[:_MAC1_START])
        message[_MAC1_START:_MAC2_START] = mac1
        self._last_mac1 = mac1
        if self._cookie_is_fresh(now):
            message[_MAC2_START:] = mac(self._cookie, message[:_MAC2_START])
        else:
            message[_MAC2_START:] = _NO_MAC

    def consume_reply(self, message: BytesLike | CookieReplyMessage, now: float) -> bool:
        """Store the cookie of a reply to our last handshake message; False if it is not one."""
        if self._last_mac1 is None:
            return False
        if not isinstance(message, CookieReplyMessage):
            try:
                message = parse_cookie_reply(message)
            except MessageError:
                return False
        try:
            cookie = xaead_decrypt(
                self._cookie_key, message.nonce, message.encrypted_cookie, self._last_mac1
            )
        except InvalidTag:
            return False
        self._cookie = cookie
        self._cookie_received_at = now
        self._last_mac1 = None
        return True

    def _cookie_is_fresh(self, now: float) -> bool:
        received_at = self._cookie_received_at
        return received_at is not None and now - received_at < self._lifetime_s
