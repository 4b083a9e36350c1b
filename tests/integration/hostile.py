"""The sprayer: hostile UDP input for a WireGuard port, bounded in count and time.

Run inside the attacker's namespace:

    python tests/integration/hostile.py --target 198.18.0.1:51820 --captured underlay.pcap

It sends, from many source ports: random bytes; truncated and oversize messages of every
type; initiations and responses with a bad mac1; cookie replies and transport messages for
unknown indexes; captured transport messages replayed as they are and with their
ciphertext corrupted; and captured initiations replayed. It prints one JSON line with how
many of each kind it sent.
"""

import argparse
import contextlib
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from pilotif_lab.capture import read_udp

from pilotif.wg.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)

PACKETS_PER_SOURCE_PORT = 25
DEFAULT_MAX_PACKETS = 2000
DEFAULT_MAX_SECONDS = 5.0
DEFAULT_RATE_PER_S = 1000.0
REPLAYED_INITIATIONS = 3
REPLAY_SPACING_S = 0.1
MAX_RANDOM_BYTES = 1400
OVERSIZE_EXTRA_BYTES = 64
OVERSIZE_TRANSPORT_BYTES = 9000
COUNTER_JUMP = 10**9
_TRANSPORT_HEADER = struct.Struct("<I4sQ")
_FIXED_SIZES = {
    MESSAGE_INITIATION: INITIATION_SIZE,
    MESSAGE_RESPONSE: RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}
_MIN_SIZES = {**_FIXED_SIZES, MESSAGE_TRANSPORT: TRANSPORT_MIN_SIZE}

Payload = tuple[str, bytes]


def _header(message_type: int) -> bytes:
    return struct.pack("<I", message_type)


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def random_datagram(rng: random.Random) -> Payload:
    """Bytes of any length and content."""
    return "random", _random_bytes(rng, rng.randint(1, MAX_RANDOM_BYTES))


def truncated(rng: random.Random) -> Payload:
    """A message of a known type, shorter than that type allows."""
    message_type = rng.choice(list(_MIN_SIZES))
    size = rng.randint(1, _MIN_SIZES[message_type] - 1)
    return "truncated", (_header(message_type) + _random_bytes(rng, size))[:size]


def oversize(rng: random.Random) -> Payload:
    """A message of a known type, longer than that type allows."""
    message_type = rng.choice([*_FIXED_SIZES, MESSAGE_TRANSPORT])
    if message_type == MESSAGE_TRANSPORT:
        size = OVERSIZE_TRANSPORT_BYTES
    else:
        size = _FIXED_SIZES[message_type] + rng.randint(1, OVERSIZE_EXTRA_BYTES)
    return "oversize", _header(message_type) + _random_bytes(rng, size - 4)


def bad_mac1_initiation(rng: random.Random) -> Payload:
    """An initiation of the right size whose mac1 cannot verify."""
    return "bad_mac1_initiation", _header(MESSAGE_INITIATION) + _random_bytes(
        rng, INITIATION_SIZE - 4
    )


def bad_mac1_response(rng: random.Random) -> Payload:
    """A response of the right size whose mac1 cannot verify."""
    return "bad_mac1_response", _header(MESSAGE_RESPONSE) + _random_bytes(rng, RESPONSE_SIZE - 4)


def unknown_cookie_reply(rng: random.Random) -> Payload:
    """A cookie reply for a random receiver index."""
    return "cookie_reply", _header(MESSAGE_COOKIE_REPLY) + _random_bytes(rng, COOKIE_REPLY_SIZE - 4)


def unknown_index_transport(rng: random.Random) -> Payload:
    """A transport message for a random receiver index."""
    size = rng.randint(TRANSPORT_MIN_SIZE, MAX_RANDOM_BYTES)
    return "unknown_index_transport", _header(MESSAGE_TRANSPORT) + _random_bytes(rng, size - 4)


def _replayed_transport(captured: list[bytes]) -> Callable[[random.Random], Payload]:
    def make(rng: random.Random) -> Payload:
        return "replayed_transport", rng.choice(captured)

    return make


def _corrupted_transport(captured: list[bytes]) -> Callable[[random.Random], Payload]:
    def make(rng: random.Random) -> Payload:
        original = rng.choice(captured)
        message_type, receiver, counter = _TRANSPORT_HEADER.unpack_from(original)
        header = _TRANSPORT_HEADER.pack(message_type, receiver, counter + COUNTER_JUMP)
        body = bytearray(original[TRANSPORT_HEADER_SIZE:])
        body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        return "corrupted_transport", header + bytes(body)

    return make


def _sources(target: tuple[str, int]) -> Iterator[socket.socket]:
    """Sockets bound to fresh ephemeral ports, one after another."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            yield sock


def _send(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(ConnectionRefusedError):
        sock.send(payload)


def spray(
    target: tuple[str, int],
    captured_path: Path | None,
    max_packets: int,
    max_seconds: float,
    rate_per_s: float,
    seed: int,
) -> Counter[str]:
    """Send hostile datagrams to `target`; how many of each kind went out."""
    rng = random.Random(seed)
    sent: Counter[str] = Counter()
    captured = read_udp(captured_path) if captured_path else []
    to_target = [d.payload for d in captured if d.destination == target]
    initiations = [p for p in to_target if p[0] == MESSAGE_INITIATION]
    transports = [p for p in to_target if p[0] == MESSAGE_TRANSPORT]
    makers: list[Callable[[random.Random], Payload]] = [
        random_datagram,
        truncated,
        oversize,
        bad_mac1_initiation,
        bad_mac1_response,
        unknown_cookie_reply,
        unknown_index_transport,
    ]
    if transports:
        makers += [_replayed_transport(transports), _corrupted_transport(transports)]
    started = time.monotonic()
    sources = _sources(target)
    sock = next(sources)
    for initiation in initiations[-1:] * REPLAYED_INITIATIONS:
        _send(sock, initiation)
        sent["replayed_initiation"] += 1
        time.sleep(REPLAY_SPACING_S)
    while sent.total() < max_packets and time.monotonic() - started < max_seconds:
        if sent.total() % PACKETS_PER_SOURCE_PORT == 0:
            sock = next(sources)
        kind, payload = rng.choice(makers)(rng)
        _send(sock, payload)
        sent[kind] += 1
        behind_s = started + sent.total() / rate_per_s - time.monotonic()
        if behind_s > 0:
            time.sleep(behind_s)
    sources.close()
    return sent


def main() -> int:
    """Spray the target and print what was sent as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="ip:port of the WireGuard port")
    parser.add_argument("--captured", type=Path, help="pcap of real traffic to replay")
    parser.add_argument("--max-packets", type=int, default=DEFAULT_MAX_PACKETS)
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE_PER_S, help="packets/s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    sent = spray(
        (host, int(port)), args.captured, args.max_packets, args.max_seconds, args.rate, args.seed
    )
    print(json.dumps(dict(sent)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
