"""The opening of a stream, sans-IO (h11 parses the HTTP): to a middlebox, a stream to the
registry or a relay is an HTTP/1.1 request that upgrades, as Tailscale's DERP does:

    GET /pilotif HTTP/1.1            ->   HTTP/1.1 101 Switching Protocols
    Host: HOST:PORT                       Upgrade: pilotif
    Upgrade: pilotif                      Connection: Upgrade
    Connection: Upgrade

after which both sides speak net/stream.py's frames. `UpgradeServer` is the listener's
side (a request that is not ours gets a 404, garbage or a request over
MAX_REQUEST_BYTES a StreamError), `upgrade_opening` the node's; its `ClientOpening`
also opens a tunnel through a proxy with CONNECT (net/proxy.py).
"""

from dataclasses import dataclass
from typing import Final

import h11

from pilotif.net.stream import StreamError

UPGRADE_PATH: Final = b"/pilotif"
UPGRADE_TOKEN: Final = b"pilotif"
MAX_REQUEST_BYTES: Final = 4096
"""The most an opening request (or an answer to one) may take, headers included."""
SWITCHING_PROTOCOLS: Final = 101
_NOT_FOUND: Final = 404


@dataclass(frozen=True)
class Opened:
    """The HTTP part is over: what to send back (the 101, nothing for a client), and the
    bytes that came after it (the first frames)."""

    answer: bytes
    rest: bytes


class RequestRefused(StreamError):
    """A well-formed HTTP request that is not ours: `answer` is what a web server would
    say to it, sent before the connection is closed."""

    def __init__(self, reason: str, answer: bytes) -> None:
        super().__init__(reason)
        self.answer = answer


def _next_event(http: h11.Connection, data: bytes, received: int, what: str) -> object | None:
    """The next event after `data` arrived (`received` bytes in all); None while more is
    needed; StreamError (`bad_WHAT`, `WHAT_too_large`) for garbage or too much."""
    http.receive_data(data)
    try:
        event = http.next_event()
    except h11.RemoteProtocolError as error:
        raise StreamError(f"bad_{what}", str(error)) from None
    if event is h11.NEED_DATA:
        if received > MAX_REQUEST_BYTES:
            raise StreamError(f"{what}_too_large")
        return None
    return event


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return b",".join(value for key, value in headers if key == name).lower()


class UpgradeServer:
    """Reads one upgrade request as its bytes arrive."""

    def __init__(self) -> None:
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self._received = 0

    def feed(self, data: bytes) -> Opened | None:
        """The opening once the request is whole; None while it is not; StreamError for
        garbage or a request too long, RequestRefused for a request that is not ours."""
        self._received += len(data)
        event = _next_event(self._http, data, self._received, "request")
        if event is None:
            return None
        if not isinstance(event, h11.Request):
            raise StreamError("bad_request", type(event).__name__)
        headers = list(event.headers)
        if (
            event.method != b"GET"
            or event.target != UPGRADE_PATH
            or UPGRADE_TOKEN not in _header(headers, b"upgrade").split(b",")
            or b"upgrade" not in _header(headers, b"connection")
        ):
            raise RequestRefused("not_an_upgrade", self._not_found())
        try:
            end = self._http.next_event()
        except h11.RemoteProtocolError as error:
            raise StreamError("bad_request", str(error)) from None
        if not isinstance(end, h11.EndOfMessage):
            # A request with a body: nothing of ours sends one.
            raise StreamError("bad_request", "a body")
        answer = h11.InformationalResponse(
            status_code=SWITCHING_PROTOCOLS,
            reason=b"Switching Protocols",
            headers=[(b"Upgrade", UPGRADE_TOKEN), (b"Connection", b"Upgrade")],
        )
        opening = self._http.send(answer) or b""
        rest, _ = self._http.trailing_data
        return Opened(opening, bytes(rest))

    def _not_found(self) -> bytes:
        response = h11.Response(
            status_code=_NOT_FOUND,
            reason=b"Not Found",
            headers=[("Content-Length", "0"), ("Connection", "close")],
        )
        return self._http.send(response) or b""


class ClientOpening:
    """A client's opening request (`request`: its bytes) and the reading of its answer as
    the bytes arrive; the answer that opens the stream is 101 to an upgrade, 2xx to a
    CONNECT."""

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_REQUEST_BYTES)
        request = h11.Request(method=method, target=target, headers=headers)
        self.request = (self._http.send(request) or b"") + (
            self._http.send(h11.EndOfMessage()) or b""
        )
        self._received = 0

    def feed(self, data: bytes) -> tuple[int, bytes] | None:
        """(the status, the bytes after the answer) once the answer is whole: the rest is
        the stream's when the status opened it, else empty; None while the answer is not
        whole; StreamError for garbage or an answer over MAX_REQUEST_BYTES."""
        self._received += len(data)
        event = _next_event(self._http, data, self._received, "answer")
        if event is None:
            return None
        if not isinstance(event, h11.InformationalResponse | h11.Response):
            raise StreamError("bad_answer", type(event).__name__)
        if self._http.their_state is not h11.SWITCHED_PROTOCOL:
            return event.status_code, b""
        rest, _ = self._http.trailing_data
        return event.status_code, bytes(rest)


def upgrade_opening(host: str) -> ClientOpening:
    """The node's opening towards the registry or relay at `host` (HOST:PORT)."""
    return ClientOpening(
        b"GET",
        UPGRADE_PATH,
        [(b"Host", host.encode()), (b"Upgrade", UPGRADE_TOKEN), (b"Connection", b"Upgrade")],
    )
