"""The lab's TCP transfer program: `python -m pilotif_lab.transfer serve|send ...`.

The receiver accepts one connection, reads to end of stream and prints one JSON line with
the byte count and SHA-256 of what arrived (and the text itself with --show-text), after
answering the --reply text, if any. The sender streams random bytes (or one message), prints
the same for what it sent, and exits only once the receiver has closed, so both lines describe
the same finished transfer.
"""

import argparse
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Sequence

CHUNK_BYTES = 64 * 1024
ACCEPT_TIMEOUT_S = 60.0
IO_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 20.0
_RETRY_INTERVAL_S = 0.2
_BACKLOG = 1


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


def serve(bind: str, port: int, show_text: bool, reply: str | None = None) -> None:
    """Accept one connection on bind:port, report everything it carried, answer `reply`."""
    with socket.socket(_family(bind), socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((bind, port))
        listener.listen(_BACKLOG)
        listener.settimeout(ACCEPT_TIMEOUT_S)
        _emit({"listening": port})
        connection, peer = listener.accept()
    digest = hashlib.sha256()
    received = bytearray() if show_text else None
    size = 0
    started = time.monotonic()
    with connection:
        connection.settimeout(IO_TIMEOUT_S)
        while chunk := connection.recv(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            if received is not None:
                received += chunk
        if reply is not None:
            connection.sendall(reply.encode("utf-8"))
    record: dict[str, object] = {
        "bytes": size,
        "sha256": digest.hexdigest(),
        "seconds": time.monotonic() - started,
        "peer": peer[0],
    }
    if received is not None:
        record["text"] = received.decode("utf-8", errors="replace")
    _emit(record)


def _connect(host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(_RETRY_INTERVAL_S)
            continue
        sock.settimeout(IO_TIMEOUT_S)
        return sock


def send(host: str, port: int, size_bytes: int, message: str | None, min_seconds: float) -> None:
    """Send `message`, or `size_bytes` random bytes paced over at least `min_seconds`."""
    digest = hashlib.sha256()
    sent = 0
    started = time.monotonic()
    with _connect(host, port) as sock:
        if message is not None:
            payload = message.encode("utf-8")
            sock.sendall(payload)
            digest.update(payload)
            sent = len(payload)
        while sent < size_bytes:
            chunk = os.urandom(min(CHUNK_BYTES, size_bytes - sent))
            sock.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
            behind_s = started + min_seconds * sent / size_bytes - time.monotonic()
            if behind_s > 0:
                time.sleep(behind_s)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(CHUNK_BYTES):
            pass
    _emit({"bytes": sent, "sha256": digest.hexdigest(), "seconds": time.monotonic() - started})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the receiver or the sender."""
    parser = argparse.ArgumentParser(prog="python -m pilotif_lab.transfer")
    commands = parser.add_subparsers(dest="command", required=True)
    receiver = commands.add_parser("serve")
    receiver.add_argument("--bind", required=True)
    receiver.add_argument("--port", type=int, required=True)
    receiver.add_argument("--show-text", action="store_true")
    receiver.add_argument("--reply")
    sender = commands.add_parser("send")
    sender.add_argument("--host", required=True)
    sender.add_argument("--port", type=int, required=True)
    sender.add_argument("--bytes", type=int, default=0)
    sender.add_argument("--message")
    sender.add_argument("--min-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.bind, args.port, args.show_text, args.reply)
    else:
        send(args.host, args.port, args.bytes, args.message, args.min_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
