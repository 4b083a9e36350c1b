"""Why an inbound datagram or an outbound packet was dropped, and the counters of each."""

from enum import StrEnum


class DropReason(StrEnum):
    """Every reason the overlay drops input; `status` shows a counter for each."""

    MALFORMED = "malformed"
    """Too short, too long, unknown message type, or non-zero reserved bytes."""
    BAD_MAC1 = "bad_mac1"
    """A handshake message whose mac1 does not verify against our public key."""
    COOKIE_REQUIRED = "cookie_required"
    """Under load, a handshake message without a valid mac2: answered by a cookie reply."""
    HANDSHAKE_FAILED = "handshake_failed"
    """A handshake message that did not decrypt or authenticate."""
    UNKNOWN_PEER = "unknown_peer"
    """An initiation from a static key that is not one of our peers."""
    REPLAYED_INITIATION = "replayed_initiation"
    """An initiation whose TAI64N timestamp is not newer than the last one seen."""
    HANDSHAKE_RATE = "handshake_rate"
    """An initiation that arrived sooner after the last one than the protocol allows."""
    UNKNOWN_INDEX = "unknown_index"
    """A response, cookie reply or transport message for an index we do not hold."""
    BAD_COOKIE = "bad_cookie"
    """A cookie reply that did not decrypt."""
    DECRYPT_FAILED = "decrypt_failed"
    """A transport message whose authentication tag does not verify."""
    REPLAY = "replay"
    """A transport message whose counter was seen before or is behind the window."""
    KEY_EXPIRED = "key_expired"
    """A transport message for a keypair past its reject time or message count."""
    NOT_IP = "not_ip"
    """A decrypted payload that is not a well-formed IPv4 or IPv6 packet."""
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    """A decrypted packet whose source address the sending peer does not own."""
    DESTINATION_NOT_LOCAL = "destination_not_local"
    """A decrypted packet addressed to something other than this node's own overlay
    addresses (a peer trying to reach our LAN or another interface through us)."""
    POLICY_DENIED = "policy_denied"
    """A decrypted packet the port policy refuses (counted per peer too)."""
    POLICY_UNREADABLE = "policy_unreadable"
    """A decrypted packet the port policy cannot judge, so refuses: an IPv6 extension
    header chain that is malformed, truncated or too long, or a first fragment without
    the transport header its ports are in (counted per peer too)."""
    FRAGMENT_UNMATCHED = "fragment_unmatched"
    """A later fragment from a peer with a port policy whose first fragment did not pass
    (or was not seen first, or too long ago) (counted per peer too)."""
    NO_ROUTE = "no_route"
    """A packet from the TUN whose destination no peer's allowed IPs cover."""
    NO_ENDPOINT = "no_endpoint"
    """A packet for a peer whose endpoint is not known yet."""
    QUEUE_FULL = "queue_full"
    """A packet dropped because too many wait for the peer's handshake."""
    HANDSHAKE_GAVE_UP = "handshake_gave_up"
    """Packets queued for a peer whose handshake never completed."""
    SEND_FAILED = "send_failed"
    """The UDP socket refused a datagram."""
    TUN_WRITE_FAILED = "tun_write_failed"
    """The TUN refused a decrypted packet (a full queue)."""
    PACKET_TOO_BIG = "packet_too_big"
    """A packet from the TUN larger than what reaches its peer (the path MTU probed):
    its sender is told with an ICMP "fragmentation needed" / "packet too big"."""


def new_drop_counters() -> dict[DropReason, int]:
    """A counter for every reason, all at zero, so `status` always lists each."""
    return dict.fromkeys(DropReason, 0)
