"""The underlay: the UDP sockets (IPv4 and IPv6, one port) that carry our datagrams."""

import contextlib
import errno
import socket
import struct
from collections.abc import Sequence

from pilotif.wg.crypto import BytesLike
from pilotif.wg.events import Endpoint

_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
_MAX_DATAGRAM_BYTES = 65535


class UnderlayError(Exception):
    """The UDP port could not be opened."""


def _open(family: socket.AddressFamily, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER_BYTES)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


class UdpSockets:
    """An IPv4 socket and, where the host has IPv6, an IPv6 socket on the same port.

    Sends block when the socket buffer is full (back-pressure, no silent loss);
    receives never block.
    """

    def __init__(self, port: int | None) -> None:
        try:
            self.v4 = _open(socket.AF_INET, port or 0)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UnderlayError(
                    f"UDP port {port} is in use; choose another ListenPort"
                ) from None
            raise UnderlayError(f"cannot open UDP port {port}: {error.strerror}") from None
        self.port: int = self.v4.getsockname()[1]
        self.v6: socket.socket | None = None
        with contextlib.suppress(OSError):
            self.v6 = _open(socket.AF_INET6, self.port)

    def sockets(self) -> list[socket.socket]:
        """The open sockets, to watch for input."""
        return [s for s in (self.v4, self.v6) if s is not None]

    def send(self, datagram: BytesLike, endpoint: Endpoint) -> bool:
        """Send one datagram; False if the kernel refused it."""
        sock = self.v6 if ":" in endpoint[0] else self.v4
        if sock is None:
            return False
        try:
            sock.sendto(datagram, endpoint)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close both sockets."""
        for sock in self.sockets():
            sock.close()


def resolve_endpoints(host: str, port: int) -> list[Endpoint]:
    """Every address of a host name (IPv4 first), or the address literal."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as error:
        raise UnderlayError(f"cannot resolve endpoint {host}: {error.strerror}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    found: list[Endpoint] = []
    for info in infos:
        endpoint = (str(info[4][0]), int(info[4][1]))
        if endpoint not in found:
            found.append(endpoint)
    return found


def resolve_endpoint(host: str, port: int) -> Endpoint:
    """An endpoint's address literal, resolving a host name (IPv4 preferred)."""
    return resolve_endpoints(host, port)[0]


def send_with_hop_limit(
    sockets: Sequence[socket.socket], datagram: bytes, endpoint: Endpoint, hops: int
) -> bool:
    """Send one datagram that routers drop after `hops` hops (its IPv4 TTL or IPv6 hop
    limit, in its own ancillary data: the socket's default stays as it is), from the UDP
    socket of the endpoint's family among `sockets`; False if there is none or the
    kernel refused it."""
    v6 = ":" in endpoint[0]
    family = socket.AF_INET6 if v6 else socket.AF_INET
    level, option = (
        (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT) if v6 else (socket.IPPROTO_IP, socket.IP_TTL)
    )
    for sock in sockets:
        if sock.family == family and sock.type == socket.SOCK_DGRAM:
            try:
                sock.sendmsg([datagram], [(level, option, struct.pack("=i", hops))], 0, endpoint)
            except OSError:
                return False
            return True
    return False
