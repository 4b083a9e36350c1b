"""The SOCKS5 server of a userspace node (RFC 1928, username/password of RFC 1929):
CONNECT to a trusted peer by name (`curl --socks5-hostname`: `beta.pilot`) or overlay
address, resolved by the node; UDP ASSOCIATE (socks5_udp.py) when the server is given the
node's UDP (`udp`). BIND is refused (command not supported).

Bad input never raises through: a greeting that is not SOCKS5 is closed at once, a client
that offers no acceptable method gets 0xFF, a failed login gets status 1, an unknown
command 7, an unknown address type 8, an unknown host 4, a refused port 5; each is
counted in `counters` by reason. The handshake must complete within HANDSHAKE_TIMEOUT_S.
"""

import asyncio
import contextlib
import hmac
import struct
from collections import Counter
from ipaddress import ip_address
from typing import Final

from pilotif.services.overlay_net import OverlayNet
from pilotif.userspace.names import Resolve
from pilotif.userspace.socks5_udp import UdpNet, associate, serve
from pilotif.userspace.socks5_wire import (
    ADDRESS_TYPES,
    ATYP_IPV4,
    IPV4_BYTES,
    PORT,
    address_rest_bytes,
    pack_address,
    parse_address,
)
from pilotif.userspace.splice import splice

VERSION: Final = 5
AUTH_VERSION: Final = 1
METHOD_NONE: Final = 0x00
METHOD_PASSWORD: Final = 0x02
METHOD_REFUSED: Final = 0xFF
CMD_CONNECT: Final = 1
CMD_UDP_ASSOCIATE: Final = 3
_COMMANDS: Final = frozenset((CMD_CONNECT, CMD_UDP_ASSOCIATE))
REPLY_SUCCEEDED: Final = 0
REPLY_FAILURE: Final = 1
REPLY_HOST_UNREACHABLE: Final = 4
REPLY_REFUSED: Final = 5
REPLY_TTL_EXPIRED: Final = 6
REPLY_COMMAND_UNSUPPORTED: Final = 7
REPLY_ADDRESS_UNSUPPORTED: Final = 8
AUTH_OK: Final = 0
AUTH_FAILED: Final = 1
HANDSHAKE_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 20.0
STREAM_LIMIT_BYTES: Final = 64 * 1024
_REQUEST_HEAD: Final = struct.Struct("!BBBB")
_UNSPECIFIED_BOUND: Final = bytes([ATYP_IPV4]) + bytes(IPV4_BYTES) + PORT.pack(0)


class _Refused(Exception):
    """The handshake ends here: `reply` (if any) is written, then the connection closed."""

    def __init__(self, reason: str, reply: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


def _reply(code: int) -> bytes:
    return bytes([VERSION, code, 0]) + _UNSPECIFIED_BOUND


class Socks5Server:
    """Serves SOCKS5 clients on a local listening socket; connects over `net`."""

    def __init__(
        self,
        net: OverlayNet,
        resolve: Resolve,
        credentials: tuple[str, str] | None = None,
        udp: UdpNet | None = None,
    ) -> None:
        self._net = net
        self._udp = udp
        self._resolve = resolve
        self._credentials = (
            None if credentials is None else (credentials[0].encode(), credentials[1].encode())
        )
        self.counters: Counter[str] = Counter()
        """Refused clients by reason, `connected` and `associated`; UDP datagrams relayed
        (`udp_sent`, `udp_received`) and dropped by reason (`udp_...`)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client (an asyncio.start_server callback)."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                command, host, port = await self._handshake(reader, writer)
            if command == CMD_UDP_ASSOCIATE:
                await self._associate(port, reader, writer)
            else:
                await self._connect(host, port, reader, writer)
        except _Refused as refused:
            self.counters[refused.reason] += 1
            if refused.reply:
                with contextlib.suppress(ConnectionError):
                    writer.write(refused.reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError):
            self.counters["truncated"] += 1
        except (ConnectionError, OSError):
            self.counters["client_lost"] += 1
        finally:
            writer.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, str, int]:
        version, count = await reader.readexactly(2)
        if version != VERSION:
            raise _Refused("not_socks5")
        methods = await reader.readexactly(count)
        wanted = METHOD_NONE if self._credentials is None else METHOD_PASSWORD
        if wanted not in methods:
            raise _Refused("no_acceptable_method", bytes([VERSION, METHOD_REFUSED]))
        writer.write(bytes([VERSION, wanted]))
        if self._credentials is not None:
            await self._login(reader, writer)
        version, command, _, kind = _REQUEST_HEAD.unpack(
            await reader.readexactly(_REQUEST_HEAD.size)
        )
        if version != VERSION:
            raise _Refused("bad_request", _reply(REPLY_FAILURE))
        if kind not in ADDRESS_TYPES:
            raise _Refused("address_type_unsupported", _reply(REPLY_ADDRESS_UNSUPPORTED))
        first = await reader.readexactly(1)
        rest = await reader.readexactly(address_rest_bytes(kind, first[0]))
        host, port, _ = parse_address(kind, first + rest)
        if (command == CMD_UDP_ASSOCIATE and self._udp is None) or command not in _COMMANDS:
            raise _Refused("command_unsupported", _reply(REPLY_COMMAND_UNSUPPORTED))
        return command, host, port

    async def _login(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._credentials is not None
        version, length = await reader.readexactly(2)
        user = await reader.readexactly(length)
        (length,) = await reader.readexactly(1)
        password = await reader.readexactly(length)
        user_ok = hmac.compare_digest(user, self._credentials[0])
        password_ok = hmac.compare_digest(password, self._credentials[1])
        if version != AUTH_VERSION or not (user_ok and password_ok):
            raise _Refused("auth_failed", bytes([AUTH_VERSION, AUTH_FAILED]))
        writer.write(bytes([AUTH_VERSION, AUTH_OK]))

    async def _connect(
        self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        address = self._resolve(host)
        if address is None or port == 0:
            raise _Refused("unknown_host", _reply(REPLY_HOST_UNREACHABLE))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                remote = await self._net.open_connection(
                    str(address), port, limit=STREAM_LIMIT_BYTES
                )
        except ConnectionRefusedError:
            raise _Refused("refused", _reply(REPLY_REFUSED)) from None
        except TimeoutError:
            raise _Refused("timeout", _reply(REPLY_TTL_EXPIRED)) from None
        except OSError:
            raise _Refused("connect_failed", _reply(REPLY_FAILURE)) from None
        bound = remote[1].get_extra_info("sockname")
        writer.write(_succeeded(bound))
        await writer.drain()
        self.counters["connected"] += 1
        await splice((reader, writer), remote)

    async def _associate(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """UDP ASSOCIATE: reply with the relay socket's address, relay until the client
        closes this connection (socks5_udp.py)."""
        assert self._udp is not None
        try:
            transport, overlay, relay = await associate(
                (reader, writer), port, self._udp, self._resolve, self.counters
            )
        except OSError:
            raise _Refused("associate_failed", _reply(REPLY_FAILURE)) from None
        try:
            writer.write(_succeeded(transport.get_extra_info("sockname")))
            await writer.drain()
            self.counters["associated"] += 1
        except BaseException:
            transport.close()
            overlay.close()
            raise
        await serve((reader, writer), transport, overlay, relay, self.counters)


def _succeeded(bound: tuple[str | int, ...]) -> bytes:
    """The reply to a request that succeeded: BND.ADDR and BND.PORT are `bound`'s."""
    address = ip_address(str(bound[0]).partition("%")[0])
    return bytes([VERSION, REPLY_SUCCEEDED, 0]) + pack_address(address, int(bound[1]))
