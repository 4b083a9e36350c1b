"""The HTTP proxy of a userspace node, for tools that only know HTTP_PROXY: CONNECT
HOST:PORT (a tunnel, e.g. for https://) and plain requests in absolute form
(`GET http://beta.pilot:8080/path`: sent on to the peer in origin form, with
`Connection: close`, one request per client connection). Hosts are trusted peers by
name or overlay address, resolved by the node. With credentials, every request needs
`Proxy-Authorization: Basic` (else 407).

Answers to bad input: 400 (no request line, not HTTP/1.x, a target without a host, a
head over MAX_HEAD_BYTES or not in time), 407 (no or wrong credentials), 502 (an unknown
host, a refused port), 504 (no answer in time); each counted in `counters`.
"""

import asyncio
import base64
import binascii
import contextlib
import hmac
from collections import Counter
from typing import Final
from urllib.parse import urlsplit

from pilotif.net.hostport import HostPortError, parse_host_port
from pilotif.services.overlay_net import OverlayNet
from pilotif.userspace.names import Resolve
from pilotif.userspace.splice import splice

MAX_HEAD_BYTES: Final = 16 * 1024
HEAD_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 20.0
DEFAULT_HTTP_PORT: Final = 80
STREAM_LIMIT_BYTES: Final = MAX_HEAD_BYTES
_HEAD_END: Final = b"\r\n\r\n"
_HOP_HEADERS: Final = frozenset(
    {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}
)
"""Headers that concern the proxy hop only: not sent on."""
_REASONS: Final = {
    400: "Bad Request",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


class _Answer(Exception):
    """The request ends with this status (and reason for the counters)."""

    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason
        self.text = text


def _response(status: int, text: str) -> bytes:
    body = (text + "\n").encode()
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain\r\n"
    if status == 407:
        head += 'Proxy-Authenticate: Basic realm="pilotif"\r\n'
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


class HttpProxy:
    """Serves HTTP proxy clients on a local listening socket; connects over `net`."""

    def __init__(
        self, net: OverlayNet, resolve: Resolve, credentials: tuple[str, str] | None = None
    ) -> None:
        self._net = net
        self._resolve = resolve
        self._expected = (
            None
            if credentials is None
            else base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode())
        )
        self.counters: Counter[str] = Counter()
        """Refused requests by reason, and `connected`."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client (an asyncio.start_server callback)."""
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    head = await reader.readuntil(_HEAD_END)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                raise _Answer(400, "bad_head", "no complete request head") from None
            await self._serve(head, reader, writer)
        except _Answer as answer:
            self.counters[answer.reason] += 1
            with contextlib.suppress(ConnectionError):
                writer.write(_response(answer.status, answer.text))
                await writer.drain()
        except (ConnectionError, OSError):
            self.counters["client_lost"] += 1
        finally:
            writer.close()

    async def _serve(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lines = head[: -len(_HEAD_END)].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Answer(400, "bad_request_line", "not an HTTP/1.x request")
        method, target, version = parts
        headers = [line.partition(":") for line in lines[1:]]
        self._check_credentials(headers)
        if method == "CONNECT":
            try:
                host, port = parse_host_port(target)
            except HostPortError:
                raise _Answer(
                    400, "bad_target", f"CONNECT needs HOST:PORT, not {target!r}"
                ) from None
            remote = await self._open(host, port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                raise _Answer(400, "bad_target", "a proxy request names http://HOST[:PORT]/")
            try:
                port = url.port or DEFAULT_HTTP_PORT
            except ValueError:
                raise _Answer(400, "bad_target", f"bad port in {target!r}") from None
            remote = await self._open(url.hostname, port)
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            kept = [
                f"{name}:{value}"
                for name, _, value in headers
                if name.strip().lower() not in _HOP_HEADERS
            ]
            request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
            remote[1].write(request.encode("latin-1") + _HEAD_END)
        self.counters["connected"] += 1
        await splice((reader, writer), remote)

    def _check_credentials(self, headers: list[tuple[str, str, str]]) -> None:
        if self._expected is None:
            return
        for name, _, value in headers:
            if name.strip().lower() != "proxy-authorization":
                continue
            scheme, _, token = value.strip().partition(" ")
            with contextlib.suppress(binascii.Error, ValueError):
                given = base64.b64encode(base64.b64decode(token.strip(), validate=True))
                if scheme.lower() == "basic" and hmac.compare_digest(given, self._expected):
                    return
        raise _Answer(407, "auth_failed", "this proxy needs its user and password (Basic)")

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = self._resolve(host)
        if address is None:
            raise _Answer(502, "unknown_host", f"{host} is not a trusted peer of this node")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await self._net.open_connection(str(address), port, limit=STREAM_LIMIT_BYTES)
        except ConnectionRefusedError:
            raise _Answer(502, "refused", f"nothing listens on {host} port {port}") from None
        except TimeoutError:
            raise _Answer(504, "timeout", f"no answer from {host} port {port}") from None
        except OSError as error:
            raise _Answer(502, "connect_failed", f"{host} port {port}: {error}") from None
