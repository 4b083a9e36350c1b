"""A userspace node's local side, as the daemon starts it (`up --userspace`): the stack
the data path reads and writes, and what local programs reach the overlay by (the SOCKS5
server, the HTTP proxy, --forward ports) and what peers reach through it (--expose,
--expose-udp).

The proxies listen on loopback unless `allow_remote` and credentials are given (anyone who
reaches them speaks to the overlay as this node); failing to listen stops `up` with one
line saying which address.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface, ip_address
from typing import Any, Final

from pilotif.net.hostport import format_endpoint
from pilotif.node.core import NodeCore
from pilotif.userspace.control import PipeHandler, control_pipes
from pilotif.userspace.expose import Expose, Exposer
from pilotif.userspace.expose_udp import UdpExposer
from pilotif.userspace.forward import Forward, Forwarder
from pilotif.userspace.http_proxy import HttpProxy
from pilotif.userspace.names import Resolve, any_address, peer_resolver
from pilotif.userspace.socks5 import Socks5Server
from pilotif.userspace.stack import UserspaceStack
from pilotif.util.logs import log_event

DEFAULT_SOCKS5: Final = ("127.0.0.1", 1080)
LOOPBACK_HOSTS: Final = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """Whether a listening host is this machine's loopback only."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class UserspaceError(OSError):
    """A proxy or forward could not listen (the message says which)."""


@dataclass(frozen=True)
class UserspaceOptions:
    """`up --userspace` and its proxies."""

    socks5: tuple[str, int] | None = DEFAULT_SOCKS5
    http_proxy: tuple[str, int] | None = None
    forwards: tuple[Forward, ...] = ()
    exposes: tuple[Expose, ...] = ()
    udp_exposes: tuple[Expose, ...] = ()
    """--expose-udp: overlay UDP ports that lead to local UDP ports."""
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    """The proxies' user and password (SOCKS5 RFC 1929, HTTP Basic)."""
    allow_remote: bool = False
    """Whether the proxies may listen beyond loopback (then credentials are required)."""


class UserspaceNode:
    """The stack and the servers of one userspace node."""

    def __init__(
        self,
        options: UserspaceOptions,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.options = options
        self.stack = UserspaceStack([a.ip for a in addresses], loop)
        self._servers: list[asyncio.Server] = []
        self._overlay_servers: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._listening: dict[str, str] = {}
        self._counters: dict[str, Callable[[], Counter[str]]] = {}
        self.resolve: Resolve = any_address
        """Trusted peers by name or address (a node of static peers: addresses only)."""
        self.pipes: dict[str, PipeHandler] = {}
        """The control socket's commands for the CLI (`dial`, `ping`), once started."""

    async def start(self, core: NodeCore | None) -> None:
        """Listen: proxies and forwards locally, exposed ports on the overlay."""
        resolve: Resolve = (
            any_address if core is None else peer_resolver(lambda: core.peers.values())
        )
        self.resolve = resolve
        self.pipes = control_pipes(self.stack, resolve)
        options = self.options
        if options.socks5 is not None:
            socks = Socks5Server(self.stack, resolve, options.credentials, udp=self.stack)
            await self._listen("socks5", options.socks5, socks.handle)
            self._counters["socks5"] = lambda: socks.counters
        if options.http_proxy is not None:
            http = HttpProxy(self.stack, resolve, options.credentials)
            await self._listen("http_proxy", options.http_proxy, http.handle)
            self._counters["http_proxy"] = lambda: http.counters
        for forward in options.forwards:
            forwarder = Forwarder(forward, self.stack, resolve)
            name = f"forward {forward.local_port}"
            await self._listen(name, ("127.0.0.1", forward.local_port), forwarder.handle)
            self._counters[name] = lambda f=forwarder: f.counters  # type: ignore[misc]
        for expose in options.exposes:
            exposer = Exposer(expose)
            try:
                server = await self.stack.start_server(exposer.handle, expose.port)
            except ValueError:
                raise UserspaceError(
                    f"--expose {expose.port}: that port is this node's own (a service)"
                ) from None
            self._overlay_servers.append(server)
            name = f"expose {expose.port}"
            self._listening[name] = f"overlay port {expose.port} -> 127.0.0.1:{expose.local_port}"
            self._counters[name] = lambda e=exposer: e.counters  # type: ignore[misc]
        for expose in options.udp_exposes:
            await self._expose_udp(expose)
        for name, where in self._listening.items():
            log_event("userspace_listening", what=name, listen=where)

    async def _expose_udp(self, expose: Expose) -> None:
        try:
            overlay = self.stack.open_udp(expose.port)
        except OSError as error:
            raise UserspaceError(f"--expose-udp {expose.port}: {error}") from None
        exposer = UdpExposer(expose, overlay)
        self._tasks.append(asyncio.ensure_future(exposer.run()))
        name = f"expose-udp {expose.port}"
        self._listening[name] = f"overlay UDP port {expose.port} -> 127.0.0.1:{expose.local_port}"
        self._counters[name] = lambda: exposer.counters

    async def _listen(
        self,
        name: str,
        endpoint: tuple[str, int],
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    ) -> None:
        try:
            server = await asyncio.start_server(handler, endpoint[0], endpoint[1])
        except OSError as error:
            log_event("userspace_not_listening", level=logging.WARNING, what=name)
            raise UserspaceError(
                f"{name} cannot listen on {format_endpoint(endpoint)}: "
                f"{error.strerror or error}; choose another port"
            ) from None
        self._servers.append(server)
        port = int(server.sockets[0].getsockname()[1])
        self._listening[name] = format_endpoint((endpoint[0], port))

    def status(self) -> dict[str, Any]:
        """What `pilotif status` shows of it."""
        return {
            "listening": dict(self._listening),
            "counters": {name: dict(counters()) for name, counters in self._counters.items()},
            "stack": dict(self.stack.stack.counters),
            "connections": self.stack.stack.connection_count,
            "buffered_bytes": self.stack.stack.buffered_bytes,
            "udp": dict(self.stack.udp.counters),
            "udp_sockets": self.stack.udp.socket_count,
        }

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for overlay_server in self._overlay_servers:
            overlay_server.close()
        for task in self._tasks:
            task.cancel()
        self.stack.close()
