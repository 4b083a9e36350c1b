"""A node on the lab's internet that no one trusts, aiming at a standalone relay.

Run inside an internet host's namespace:

    python tests/integration/relay_intruder.py --relay 198.18.0.3:7947 \\
        --relay-key KEY --victim KEY --count 20

It attaches to the relay (a real attach: cookie, instance, sealed request) presenting a
ticket it made itself for the victim, then sends `count` relay messages addressed to the
victim (each carrying a WireGuard handshake initiation's worth of bytes). It prints one
JSON line: whether the attach was accepted, how many tickets the relay took, what was
sent, and how many datagrams came back.
"""

import argparse
import json
import os
import socket
import time

from pilotif.control.tickets import TICKET_LIFETIME_S, issue_ticket
from pilotif.control.wire import pack_relay
from pilotif.net.hostport import parse_address_port
from pilotif.node.registry_link import RegistryLink, Reply
from pilotif.wg.crypto import generate_private_key, public_key
from pilotif.wg.keys import decode_key

_INITIATION_BYTES = 148
_ANSWER_WAIT_S = 0.5
_ATTEMPTS = 10


def _request(
    link: RegistryLink, sock: socket.socket, fields: dict[str, object]
) -> dict[str, object]:
    """Send an attach through the link and return the relay's reply."""
    request_id = link.request("attach", fields, time.monotonic())
    for _ in range(_ATTEMPTS):
        for data, to in link.outgoing:
            sock.sendto(data, to)
        link.outgoing = []
        try:
            data, source = sock.recvfrom(2048)
        except TimeoutError:
            link.handle_timer(time.monotonic() + 1)
            continue
        for item in link.receive(data, time.monotonic(), (source[0], source[1])):
            if isinstance(item, Reply) and item.request_id == request_id:
                return item.message
    raise SystemExit("the relay did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--relay", required=True)
    parser.add_argument("--relay-key", required=True)
    parser.add_argument("--victim", required=True)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    relay = parse_address_port(args.relay)
    victim = decode_key(args.victim)
    private = generate_private_key()
    link = RegistryLink(private, relay, decode_key(args.relay_key), first_counter=0)
    forged = issue_ticket(
        os.urandom(32), public_key(private), victim, int(time.time()) + TICKET_LIFETIME_S
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_ANSWER_WAIT_S)
        reply = _request(link, sock, {"instance": None, "tickets": [forged]})
        reply = _request(link, sock, {"instance": reply.get("instance"), "tickets": [forged]})
        for _ in range(args.count):
            sock.sendto(pack_relay(victim, b"\x01" + os.urandom(_INITIATION_BYTES - 1)), relay)
        came_back = 0
        try:
            while True:
                sock.recvfrom(2048)
                came_back += 1
        except TimeoutError:
            pass
    print(
        json.dumps(
            {
                "attached": reply.get("ok") is True,
                "tickets_accepted": reply.get("accepted"),
                "sent": args.count,
                "came_back": came_back,
            }
        )
    )


if __name__ == "__main__":
    main()
