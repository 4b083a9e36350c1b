"""The registry's wire formats, shared by the registry and the node: sealed control
messages (0x50), relayed WireGuard datagrams (0x51), the registry key request (0x52),
punch openers (0x53), the registry's cookie replies (0x54), its notice that a relay
message came from an unknown address (0x55) and a node's keepalive to replicas (0x56).

docs/CONTROL_PROTOCOL.md is the contract. Parsers of peer input raise WireError only,
with a short `reason` that the receiver counts; our own misuse raises ValueError.
"""

import json
import struct
from typing import Any, Final

from cryptography.exceptions import InvalidTag

from pilotif.net.hostport import format_endpoint as format_endpoint
from pilotif.net.hostport import parse_address_port
from pilotif.net.relay_frame import CONTROL_TYPE as CONTROL_TYPE
from pilotif.net.relay_frame import PUNCH_OPENER as PUNCH_OPENER
from pilotif.net.relay_frame import PUNCH_OPENER_TYPE as PUNCH_OPENER_TYPE
from pilotif.net.relay_frame import RELAY_HEADER_SIZE as RELAY_HEADER_SIZE
from pilotif.net.relay_frame import RELAY_TYPE as RELAY_TYPE
from pilotif.net.relay_frame import RESERVED as _RESERVED
from pilotif.net.relay_frame import RESERVED_ZEROS as _RESERVED_ZEROS
from pilotif.net.relay_frame import WireError as WireError
from pilotif.net.relay_frame import pack_relay as pack_relay
from pilotif.net.relay_frame import unpack_relay as unpack_relay
from pilotif.wg.constants import AEAD_TAG_SIZE
from pilotif.wg.crypto import (
    KEY_SIZE,
    MAC_SIZE,
    PrivateKey,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    kdf2,
)
from pilotif.wg.crypto import public_key as _public_key
from pilotif.wg.events import Endpoint

KEY_REQUEST_TYPE: Final = 0x52
RELAY_SOURCE_UNKNOWN_TYPE: Final = 0x55
RELAY_SOURCE_UNKNOWN: Final = bytes((RELAY_SOURCE_UNKNOWN_TYPE, 0, 0, 0))
"""The registry's answer to a relay message from an address no node registered from: the
sender's NAT gave it a new public port (a flushed mapping, a roam). The node registers
again at once. Four bytes: smaller than any relay message, so it amplifies nothing."""
REPLICA_KEEPALIVE_TYPE: Final = 0x56
REPLICA_KEEPALIVE: Final = bytes((REPLICA_KEEPALIVE_TYPE, 0, 0, 0))
"""What a node given several replicas sends the ones it does not talk to, with each
heartbeat: it keeps its NAT open towards them, so that one of them can tell it to move
(`use_replica`) when its own replica dies. The registry counts it and answers nothing."""
BUSY_TYPE: Final = 0x57
_BUSY: Final = struct.Struct("<B3xI16s")
BUSY_SIZE: Final = _BUSY.size
"""The registry's "busy, retry after N ms": the type, three zero bytes, the pause in ms
(uint32 little-endian) and the mac1 of the request it answers, which only the node and
its path saw (an off-path sender cannot forge one the node takes). 24 bytes, smaller
than any request: it amplifies nothing, and it goes only to a proven address."""
REGISTRY_COOKIE_TYPE: Final = 0x54
"""The registry's cookie reply (WireGuard's type 3 layout): it answers a control message
whose mac2 does not prove the sender's address, and carries the cookie that will."""
COOKIE_CHALLENGE_INDEX: Final = 0
COOKIE_RENEWAL_INDEX: Final = 1
"""The receiver index of a cookie reply: a challenge (the message was not served: send
it again with the cookie) or a renewal (sent beside the answer to a message whose cookie
came from the secret before the current one: keep the new cookie, send nothing again)."""
CONTROL_HEADER_SIZE: Final = 44
REQUEST_MACS_SIZE: Final = 2 * MAC_SIZE
"""mac1 and mac2 follow the ciphertext of every control message a node sends."""
KEY_MESSAGE_SIZE: Final = 36
MAX_PAYLOAD_BYTES: Final = 1200
MAX_COUNTER: Final = 2**63 - 1
CONTROL_REPLAY_WINDOW: Final = 128
"""How far behind the highest counter a control message is still accepted once: a
node's requests arrive nearly in order, and the registry keeps a channel per node (the
data plane's window is 8,192 counters)."""
_WINDOW_MASK: Final = (1 << CONTROL_REPLAY_WINDOW) - 1
"""The cap lets counters fit a signed SQL BIGINT (pilotif.control.counter_lease hands them out)."""

COUNTER_LEASE: Final = 1024
"""The counter floor the registry stores for a node runs at most this far ahead of the
counters it accepted, so it is written once per COUNTER_LEASE / 2 messages; after a
registry restart the node's first message is refused as stale and sent again above the
floor (one round trip). A node that moves to another replica goes this far up at once,
so that replica (which holds it to the stored floor) takes its first message."""
MAX_REQUEST_ID: Final = 2**63 - 1
"""Requests with a larger (or no) id get no reply; sessions are no larger either."""

KEY_REQUEST: Final = bytes((KEY_REQUEST_TYPE, 0, 0, 0)) + bytes(KEY_SIZE)
"""What a node sends to learn the registry's key on first contact."""

_CONTROL_HEADER: Final = struct.Struct("<B3x32sQ")
_CONTROL_LABEL: Final = b"pilotif control v1"
_MAX_CIPHERTEXT_BYTES: Final = MAX_PAYLOAD_BYTES + AEAD_TAG_SIZE

assert _CONTROL_HEADER.size == CONTROL_HEADER_SIZE


class StaleCounter(WireError):
    """An authentic message whose counter was seen, or lies below what we accept: a
    replay, or a sender that counts from too low after a restart. `message` is what it
    carries and `floor` the counter the sender must go above."""

    def __init__(self, message: dict[str, Any], floor: int) -> None:
        super().__init__("stale_counter")
        self.message = message
        self.floor = floor


def control_sender(datagram: bytes) -> bytes:
    """The 32-byte public key that claims to have sent a control message (unverified)."""
    _check_control_header(datagram)
    return bytes(datagram[4:RELAY_HEADER_SIZE])


def _check_control_header(datagram: bytes) -> None:
    if len(datagram) < CONTROL_HEADER_SIZE + AEAD_TAG_SIZE:
        raise WireError("malformed", "shorter than a control header and tag")
    if datagram[0] != CONTROL_TYPE or datagram[_RESERVED] != _RESERVED_ZEROS:
        raise WireError("malformed", "not a control message")


class ControlChannel:
    """Sealing to, and opening from, one remote party (a node, or the registry).

    Keys: KDF2(HASH("pilotif control v1"), DH(local, remote)); the first key carries
    node-to-registry messages, the second registry-to-node ones. A counter is accepted
    once, within CONTROL_REPLAY_WINDOW of the highest, and above any floor given by
    `restore_counter`.
    """

    __slots__ = (
        "_floor",
        "_highest",
        "_local_public",
        "_receive_key",
        "_remote",
        "_seen",
        "_send_key",
    )

    def __init__(
        self,
        local_private: PrivateKey,
        remote_public: bytes,
        *,
        local_is_registry: bool,
        local_public: bytes | None = None,
    ):
        if len(remote_public) != KEY_SIZE:
            raise ValueError("a public key is 32 bytes")
        to_registry, to_node = kdf2(hash_(_CONTROL_LABEL), dh(local_private, remote_public))
        self._send_key, self._receive_key = (
            (to_node, to_registry) if local_is_registry else (to_registry, to_node)
        )
        # The registry opens a channel per node and passes its own public key, which would
        # otherwise be computed again each time (a quarter of a channel's cost).
        self._local_public = local_public or _public_key(local_private)
        self._remote = bytes(remote_public)
        self._seen = 0
        """Bit i: counter `_highest - i` was accepted."""
        self._floor = -1
        self._highest = -1

    @property
    def highest_counter(self) -> int:
        """The highest counter accepted so far (or restored), -1 before any."""
        return self._highest

    def restore_counter(self, counter: int) -> None:
        """Refuse every counter up to `counter` (the highest one seen before a restart)."""
        self._floor = max(self._floor, counter)
        if counter > self._highest:
            self._seen = _slid(self._seen, counter - self._highest)
            self._highest = counter

    def seal(self, payload: dict[str, Any], counter: int) -> bytes:
        """The datagram carrying `payload`; ValueError if its JSON exceeds MAX_PAYLOAD_BYTES."""
        if not 0 <= counter <= MAX_COUNTER:
            raise ValueError(f"counter {counter} out of range")
        plaintext = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        if len(plaintext) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"control payload of {len(plaintext)} bytes exceeds {MAX_PAYLOAD_BYTES}"
            )
        header = _CONTROL_HEADER.pack(CONTROL_TYPE, self._local_public, counter)
        return header + aead_encrypt(self._send_key, counter, plaintext, header)

    def open(self, datagram: bytes) -> dict[str, Any]:
        """The JSON object a datagram from the remote party carries; WireError otherwise."""
        _check_control_header(datagram)
        if len(datagram) - CONTROL_HEADER_SIZE > _MAX_CIPHERTEXT_BYTES:
            raise WireError("too_large")
        header = bytes(datagram[:CONTROL_HEADER_SIZE])
        _, sender, counter = _CONTROL_HEADER.unpack(header)
        if sender != self._remote:
            raise WireError("wrong_sender")
        if counter > MAX_COUNTER:
            raise WireError("malformed", "counter out of range")
        try:
            plaintext = aead_decrypt(
                self._receive_key, counter, datagram[CONTROL_HEADER_SIZE:], header
            )
        except InvalidTag:
            raise WireError("decrypt_failed") from None
        message = _parse_payload(plaintext)
        if counter <= self._floor or not self._accept(counter):
            raise StaleCounter(message, self._highest)
        return message

    def _accept(self, counter: int) -> bool:
        """Mark `counter` seen; False if it was, or is too far behind to tell."""
        behind = self._highest - counter
        if behind < 0:
            self._seen = _slid(self._seen, -behind) | 1
            self._highest = counter
            return True
        if behind >= CONTROL_REPLAY_WINDOW or self._seen >> behind & 1:
            return False
        self._seen |= 1 << behind
        return True


def _slid(seen: int, ahead: int) -> int:
    """The replay window `seen` once the highest counter went `ahead` (> 0) up: a jump
    past the window empties it without building an integer `ahead` bits long (a
    registry restarted with a far higher counter stalled each node for seconds)."""
    if ahead >= CONTROL_REPLAY_WINDOW:
        return 0
    return seen << ahead & _WINDOW_MASK


def pack_busy(request: bytes, retry_after_ms: int) -> bytes:
    """The busy notice answering `request` (a control message with its macs)."""
    return _BUSY.pack(BUSY_TYPE, retry_after_ms, request_mac1(request))


def parse_busy(data: bytes) -> tuple[int, bytes]:
    """The pause (ms) and the request's mac1 a busy notice carries; WireError if it is
    not one."""
    if len(data) != BUSY_SIZE:
        raise WireError("malformed", "a busy notice is 24 bytes")
    kind, retry_after_ms, mac1 = _BUSY.unpack(data)
    if kind != BUSY_TYPE or data[1:4] != bytes(3):
        raise WireError("malformed", "not a busy notice")
    return retry_after_ms, mac1


def request_mac1(request: bytes | bytearray) -> bytes:
    """The mac1 of a control message a node sends (what a busy notice echoes)."""
    return bytes(request[-REQUEST_MACS_SIZE : -REQUEST_MACS_SIZE + MAC_SIZE])


def _parse_payload(plaintext: bytes) -> dict[str, Any]:
    try:
        message = json.loads(plaintext)
    except (UnicodeDecodeError, ValueError):
        raise WireError("malformed", "payload is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise WireError("malformed", "payload is not an object with an op")
    return message


def id_field(message: dict[str, Any], name: str) -> int | None:
    """A request id or session from a message: an integer in 0..MAX_REQUEST_ID, else None."""
    value = message.get(name)
    return value if type(value) is int and 0 <= value <= MAX_REQUEST_ID else None


def error_reply(code: str, error: str, hint: str) -> dict[str, Any]:
    """The reply refusing a request: `code` for programs, `error` and `hint` for people."""
    return {"op": "reply", "ok": False, "code": code, "error": error, "hint": hint}


def stale_counter_reply(floor: int) -> dict[str, Any]:
    """The reply to a message whose counter was seen or lies below what we accept: the
    sender goes above `floor` and sends it again."""
    notice = error_reply("stale_counter", "the counter is not above the last one", "")
    notice["floor"] = floor
    return notice


def parse_endpoint(text: str) -> Endpoint:
    """The endpoint written as `ip:port` or `[ip6]:port`; ValueError if it is not one."""
    return parse_address_port(text)


def pack_key_reply(registry_public: bytes) -> bytes:
    """The registry's answer to KEY_REQUEST: `0x52 0 0 0 | registry public key`."""
    if len(registry_public) != KEY_SIZE:
        raise ValueError("a public key is 32 bytes")
    return bytes((KEY_REQUEST_TYPE, 0, 0, 0)) + registry_public


def unpack_key_reply(datagram: bytes) -> bytes:
    """The registry key in an answer to KEY_REQUEST; WireError if malformed."""
    if (
        len(datagram) != KEY_MESSAGE_SIZE
        or datagram[0] != KEY_REQUEST_TYPE
        or datagram[_RESERVED] != _RESERVED_ZEROS
        or datagram[4:] == bytes(KEY_SIZE)
    ):
        raise WireError("malformed", "not a registry key answer")
    return bytes(datagram[4:])
