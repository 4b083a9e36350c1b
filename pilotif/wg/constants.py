"""Protocol constants of the WireGuard whitepaper (section 6 and 5.4), named once."""

from typing import Final

REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
REKEY_AFTER_TIME_S: Final = 120.0
REJECT_AFTER_TIME_S: Final = 180.0
REKEY_ATTEMPT_TIME_S: Final = 90.0
REKEY_TIMEOUT_S: Final = 5.0
REKEY_TIMEOUT_JITTER_MAX_S: Final = 0.333
KEEPALIVE_TIMEOUT_S: Final = 10.0
COOKIE_REFRESH_TIME_S: Final = 120.0
# The initiator of the current session rekeys on receive when the session is this old.
REKEY_ON_RECEIVE_AGE_S: Final = REJECT_AFTER_TIME_S - KEEPALIVE_TIMEOUT_S - REKEY_TIMEOUT_S
# A keypair that a rotation pushes out of the three slots (previous, current, next) is
# still accepted this long, never used to send: when both sides rekey at once, each keeps
# sending under its old session until its own response arrives, and the other side's new
# `next` has already pushed that session out (the whitepaper's slots lose those packets).
RETIRED_KEYPAIR_S: Final = REKEY_TIMEOUT_S
MAX_RETIRED_KEYPAIRS: Final = 2
# Send a new handshake at most this often per peer (wireguard-go: RekeyTimeout).
HANDSHAKE_INITIATION_RATE_S: Final = 1 / 50

MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4

INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
AEAD_TAG_SIZE: Final = 16
TRANSPORT_MIN_SIZE: Final = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
PADDING_MULTIPLE: Final = 16
# Largest UDP payload we accept or produce.
MAX_DATAGRAM_SIZE: Final = 65535 - 8 - 40

REPLAY_WINDOW_SIZE: Final = 8192
# Packets queued per peer while its handshake is in flight.
MAX_STAGED_PACKETS: Final = 128
# Handshake messages per second above which the responder asks for cookies.
UNDER_LOAD_HANDSHAKES_PER_S: Final = 128
UNDER_LOAD_HOLD_S: Final = 1.0
