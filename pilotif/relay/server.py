"""The relay as a service: `run_relay` runs a `RelayCore` on a UDP socket with asyncio
(the registry's loop), keeps its key and counter lease in the state dir, and learns the
registry's key from the registry itself on first start (pinned afterwards)."""

import asyncio
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pilotif.control.counter_lease import CounterLease
from pilotif.control.identity import load_or_create_key
from pilotif.control.shell import Housekeeping, serve_until_stopped
from pilotif.control.wire import KEY_REQUEST, WireError, format_endpoint, unpack_key_reply
from pilotif.relay.core import RelayCore
from pilotif.util.files import StateFileError, read_state_file, write_private_file
from pilotif.util.logs import log_event, setup_logging
from pilotif.util.paths import StatePaths
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

RELAY_KEY_FILE: Final = "relay.key"
RELAY_COUNTER_FILE: Final = "relay.counter"
REGISTRY_KEY_PIN_FILE: Final = "relay-registry.pub"
EXPIRE_EVERY_S: Final = 10.0
KEY_FETCH_ATTEMPTS: Final = 5
KEY_FETCH_WAIT_S: Final = 1.0
KEY_CONFIRM_S: Final = 0.5
"""How long the relay listens for other answers after the registry's first."""
KEY_REPLY_MAX_BYTES: Final = 64


class RelayStartError(Exception):
    """The relay cannot start: the registry's key is unknown, or not the pinned one."""


@dataclass(frozen=True)
class RelayOptions:
    """Whose tickets the relay accepts: the registry at `registry` (its key learnt on
    first start, then pinned), or the one whose key is `registry_key`."""

    registry: Endpoint | None = None
    registry_key: bytes | None = None
    tcp_listens: tuple[Endpoint, ...] = ()
    """Where streams are accepted besides TCP on the UDP listen address and port."""


def fetch_registry_key(registry: Endpoint) -> bytes:
    """Ask the registry for its key (0x52), as a node does on first contact. The answer
    is listened for KEY_CONFIRM_S past the first: anyone can send a datagram from the
    registry's address, and an off-path spoofer racing the registry shows as a second
    key, which RelayStartError refuses (no key is taken then)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(*registry, type=socket.SOCK_DGRAM)[0]
    except OSError as error:
        raise RelayStartError(f"--registry {format_endpoint(registry)}: {error}") from None
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)  # the kernel drops what comes from elsewhere
        for _ in range(KEY_FETCH_ATTEMPTS):
            try:
                sock.send(KEY_REQUEST)
            except ConnectionRefusedError:
                # The port unreachable of the previous try: nothing listens there yet.
                time.sleep(KEY_FETCH_WAIT_S)
                continue
            keys = _keys_heard(sock)
            if len(keys) > 1:
                raise RelayStartError(
                    f"the registry at {format_endpoint(registry)} answered with"
                    f" {len(keys)} different keys: someone else sends from its address;"
                    " give --registry-key KEY (the registry's first log line says it)"
                )
            if keys:
                return keys.pop()
    raise RelayStartError(
        f"the registry at {format_endpoint(registry)} did not say its key"
        f" ({KEY_FETCH_ATTEMPTS} tries): check the address and that it runs,"
        " or give --registry-key"
    )


def _keys_heard(sock: socket.socket) -> set[bytes]:
    """The keys answered on a connected socket within KEY_FETCH_WAIT_S, and within
    KEY_CONFIRM_S of the first."""
    keys: set[bytes] = set()
    deadline = time.monotonic() + KEY_FETCH_WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(KEY_REPLY_MAX_BYTES)
        except TimeoutError:
            break
        except ConnectionRefusedError:
            # Nothing listens there (yet): an ICMP port unreachable came back.
            time.sleep(left)
            break
        try:
            key = unpack_key_reply(data)
        except WireError:
            continue
        if not keys:
            deadline = time.monotonic() + KEY_CONFIRM_S
        keys.add(key)
    return keys


def registry_key_for(state_dir: Path, options: RelayOptions) -> bytes:
    """The registry key whose tickets we accept: given, pinned, or asked for and pinned.
    RelayStartError if the registry now has another key than the pinned one."""
    if options.registry_key is not None:
        return options.registry_key
    pin = state_dir / REGISTRY_KEY_PIN_FILE
    text = read_state_file(pin)
    pinned = None
    if text is not None:
        try:
            pinned = decode_key(text)
        except InvalidKeyError as error:
            raise StateFileError(f"{pin}: {error}") from None
    if options.registry is None:
        if pinned is None:
            raise RelayStartError("give --registry HOST:PORT or --registry-key KEY")
        return pinned
    key = fetch_registry_key(options.registry)
    if pinned is not None and key != pinned:
        raise RelayStartError(
            f"the registry at {format_endpoint(options.registry)} has key {encode_key(key)},"
            f" not the pinned {encode_key(pinned)}: if that is expected, delete {pin}"
        )
    if pinned is None:
        write_private_file(pin, encode_key(key) + "\n")
    return key


def run_relay(
    listen: Endpoint, state_dir: Path, options: RelayOptions, log_format: str = "text"
) -> None:
    """Run the relay in the foreground until SIGTERM or SIGINT. Its key is
    `state_dir/relay.key` (created on first run); the registry's operator lists it as
    `--relay PUBLIC_KEY@IP:PORT`, which the first log line says."""
    setup_logging(as_json=log_format == "json")
    registry_key = registry_key_for(state_dir, options)
    StatePaths(state_dir).create()
    private_key = load_or_create_key(state_dir / RELAY_KEY_FILE)
    lease = CounterLease(state_dir / RELAY_COUNTER_FILE)
    core = RelayCore(private_key, registry_key, first_counter=lease.first)
    public = encode_key(core.public_key)
    log_event(
        "relay_started",
        listen=format_endpoint(listen),
        tcp_listen=",".join(format_endpoint(e) for e in options.tcp_listens),
        public_key=public,
        registry_key=encode_key(registry_key),
        state_dir=str(state_dir),
        hint=f"start the registry with --relay {public}@PUBLIC_IP:{listen[1]}",
    )
    housekeeping: Housekeeping = [("expire", EXPIRE_EVERY_S, lambda: core.expire(time.time()))]
    try:
        asyncio.run(
            serve_until_stopped(core, lease, listen, housekeeping, tcp_listens=options.tcp_listens)
        )
    finally:
        log_event("relay_stopped", **core.describe())
