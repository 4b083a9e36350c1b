"""The blocking client of a peer's services, for the CLI and the MCP server (the daemon
uses the asyncio one, pilotif.services.client): a file, a publish, a subscription.
Failures are ServiceError with a code and a hint."""

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

from pilotif.services.broker import TopicError, check_topic
from pilotif.services.client import ServiceError
from pilotif.services.server import EVENTS_PORT, MESSAGES_PORT
from pilotif.services.wire import MAX_LINE_BYTES, WireError, decode, encode

CONNECT_TIMEOUT_S: Final = 10.0
ANSWER_TIMEOUT_S: Final = 60.0
CHUNK_BYTES: Final = 256 * 1024
_CLOSED_HINT: Final = "the peer runs an older pilotif, or its port policy refuses that port"


Dial = Callable[[str, int, float], socket.socket]
"""Opens a TCP connection to (address, port) within a timeout (OSError, and
ConnectionRefusedError when nothing listens): the kernel's, or a userspace node's pipe."""


def kernel_dial(address: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection through the kernel (a TUN node)."""
    return socket.create_connection((address, port), timeout_s)


def connect(
    address: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S, dial: Dial = kernel_dial
) -> socket.socket:
    """A TCP connection to a peer's service."""
    try:
        conn = dial(address, port, min(timeout_s, CONNECT_TIMEOUT_S))
    except ConnectionRefusedError:
        raise ServiceError(
            "service_closed", f"nothing listens on {address}:{port}", _CLOSED_HINT
        ) from None
    except OSError as error:
        raise ServiceError(
            "peer_unreachable", f"{address}:{port}: {error.strerror or error}"
        ) from None
    conn.settimeout(ANSWER_TIMEOUT_S)
    return conn


def read_answer(stream: BinaryIO) -> dict[str, Any]:
    """The next answer line (`ok` true); ServiceError for a refusal or garbage."""
    try:
        line = stream.readline(MAX_LINE_BYTES + 1)
    except OSError as error:
        raise ServiceError("peer_unreachable", f"no answer: {error}") from None
    if not line:
        raise ServiceError("service_failed", "the peer closed the connection without an answer")
    try:
        answer = decode(line)
    except WireError as error:
        raise ServiceError("service_failed", f"the peer answered garbage: {error}") from None
    if not answer.get("ok"):
        raise ServiceError(str(answer.get("code", "refused")), str(answer.get("error")))
    return answer


def checked_topic(text: str, *, pattern: bool = False) -> str:
    try:
        return check_topic(text, pattern=pattern)
    except TopicError as error:
        raise ServiceError("bad_topic", str(error)) from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def send_file(
    address: str,
    path: Path,
    on_progress: Callable[[int], object] = lambda sent: None,
    dial: Dial = kernel_dial,
) -> dict[str, Any]:
    """Send a file to a peer; its answer once it kept the file whole."""
    try:
        size = path.stat().st_size
        sha256 = sha256_of(path)
        source = path.open("rb")
    except OSError as error:
        raise ServiceError("bad_input", f"cannot read {path}: {error.strerror}") from None
    header = {"op": "file", "name": path.name, "size": size, "sha256": sha256}
    with source, connect(address, MESSAGES_PORT, dial=dial) as conn:
        stream = conn.makefile("rb")
        try:
            conn.sendall(encode(header))
            read_answer(stream)
            while chunk := source.read(CHUNK_BYTES):
                conn.sendall(chunk)
                on_progress(len(chunk))
        except OSError as error:
            raise ServiceError(
                "peer_unreachable", f"{address}: {error.strerror or error}"
            ) from None
        return read_answer(stream)


def publish(address: str, topic: str, data: Any, dial: Dial = kernel_dial) -> int:
    """Publish on a peer's topic; how many subscribers it reached."""
    with connect(address, EVENTS_PORT, dial=dial) as conn:
        conn.sendall(encode({"op": "publish", "topic": checked_topic(topic), "data": data}))
        return int(read_answer(conn.makefile("rb")).get("delivered", 0))


def subscribe(
    address: str,
    pattern: str,
    count: int | None,
    timeout_s: float | None,
    on_subscribed: Callable[[], object] = lambda: None,
    dial: Dial = kernel_dial,
) -> Iterator[dict[str, Any]]:
    """The events published on a peer's topics matching `pattern` from now on, until
    `count` of them or `timeout_s` seconds (None: no end)."""
    checked = checked_topic(pattern, pattern=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with connect(address, EVENTS_PORT, timeout_s or CONNECT_TIMEOUT_S, dial) as conn:
        conn.sendall(encode({"op": "subscribe", "topic": checked}))
        stream = conn.makefile("rb")
        read_answer(stream)
        on_subscribed()
        seen = 0
        while count is None or seen < count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            conn.settimeout(remaining)
            try:
                line = stream.readline(MAX_LINE_BYTES + 1)
            except TimeoutError:
                return
            if not line:
                raise ServiceError("service_failed", "the peer closed the subscription")
            try:
                yield decode(line)
            except WireError as error:
                raise ServiceError("service_failed", f"the peer sent garbage: {error}") from None
            seen += 1
