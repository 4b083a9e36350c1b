"""pilotif inside a Python program (what tsnet is to Go): a node with its network stack
in the process, no daemon, no root, no TUN.

    async with pilotif.Node(registry="reg.example.org:7946", hostname="alpha",
                            state_dir="~/.local/state/alpha") as node:
        await node.handshake("beta")
        reader, writer = await node.open_connection("beta", 1000)
        server = await node.start_server(handler, port=1000)

The node is the daemon's (`pilotif up --userspace`) without its control socket and
proxies: the same registration, trust, paths and agent services; its state directory
holds its key, trusted peers and inbox as a daemon's does (one program at a time).
"""

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pilotif.control.identity import load_or_create_key, normalize_hostname
from pilotif.daemon.daemon import Daemon
from pilotif.daemon.wgquick import InterfaceConfig
from pilotif.net.fallback import TransportMode
from pilotif.net.hostport import parse_host_port
from pilotif.node.registration import NodeOptions
from pilotif.services.overlay_net import ConnectedCallback
from pilotif.userspace.node import UserspaceOptions
from pilotif.userspace.stack import STREAM_LIMIT_BYTES, StackServer
from pilotif.userspace.udp import UdpEndpoint
from pilotif.util.errors import CodedError
from pilotif.util.paths import StatePaths
from pilotif.wg.keys import decode_key

INTERFACE: Final = "pilot0"
"""The name a node in a program gives its stack in logs and status."""


class NodeError(CodedError):
    """A request the node refused (`code` and `hint` as the CLI's errors)."""


class Node:
    """A pilotif node in this program's event loop; see the module docstring."""

    def __init__(
        self,
        *,
        registry: str,
        hostname: str,
        state_dir: str | Path,
        tags: Sequence[str] = (),
        registry_key: str | None = None,
        auto_approve: str | None = None,
        join_key: str | None = None,
        listen_port: int | None = None,
        transport: str = TransportMode.AUTO.value,
    ) -> None:
        """`registry` HOST:PORT, this node's `hostname`, its own `state_dir`; the rest as
        `pilotif up`'s options of the same names."""
        self._paths = StatePaths(Path(state_dir).expanduser().absolute())
        self._options = NodeOptions(
            registry=parse_host_port(registry),
            hostname=normalize_hostname(hostname),
            tags=list(tags),
            registry_key=decode_key(registry_key) if registry_key else None,
            auto_approve=auto_approve,
            accept_dns=False,
            join_key=join_key,
            transport=TransportMode(transport),
        )
        self._listen_port = listen_port
        self._daemon: Daemon | None = None

    async def __aenter__(self) -> "Node":
        """Join the registry and serve (StartupError, StateFileError: why not)."""
        self._paths.create()
        key = load_or_create_key(self._paths.identity_key)
        config = InterfaceConfig(
            private_key=key, addresses=(), listen_port=self._listen_port, mtu=None, peers=()
        )
        daemon = Daemon(
            config, INTERFACE, self._paths, self._options, userspace=UserspaceOptions(socks5=None)
        )
        await daemon.start()
        self._daemon = daemon
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave: connections end, the node stops."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            await daemon.stop()

    @property
    def address(self) -> IPv4Address:
        """This node's overlay IPv4 address."""
        core = self._running().parts.node
        assert core is not None and core.core.ipv4 is not None
        return core.core.ipv4

    async def open_connection(
        self, peer: str, port: int, *, limit: int = STREAM_LIMIT_BYTES
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to `port` of a trusted peer (hostname, `NAME.pilot` or overlay
        address) as asyncio streams; OSError when it cannot be made."""
        local = self._running().local
        assert local is not None
        address = local.resolve(peer)
        if address is None:
            raise NodeError("peer_not_trusted", f"{peer!r} is not a trusted peer")
        return await local.stack.open_connection(address, port, limit=limit)

    async def start_server(
        self, handler: ConnectedCallback, port: int, *, limit: int = STREAM_LIMIT_BYTES
    ) -> StackServer:
        """Serve `port` of this node's overlay addresses: `handler(reader, writer)` for each
        connection from a trusted peer (the port policy applies)."""
        local = self._running().local
        assert local is not None
        return await local.stack.start_server(handler, port, limit=limit)

    def open_udp(self, port: int | None = None) -> UdpEndpoint:
        """A UDP port of this node's overlay addresses (None: a free one):
        `send(data, (peer, port))` to a trusted peer by name or address, `await recv()`
        for `(data, (address, port))` (or, once, the ICMP error about a datagram sent:
        ConnectionRefusedError when nothing listens there); OSError when the port is
        taken."""
        local = self._running().local
        assert local is not None
        return local.stack.open_udp(port, resolve=local.resolve)

    async def handshake(self, peer: str, message: str = "") -> dict[str, Any]:
        """Ask `peer` for mutual trust (`pilotif handshake`)."""
        return await self._request("handshake", peer=peer, message=message)

    async def approve(self, peer: str) -> dict[str, Any]:
        return await self._request("approve", peer=peer)

    async def reject(self, peer: str) -> dict[str, Any]:
        return await self._request("reject", peer=peer)

    async def untrust(self, peer: str) -> dict[str, Any]:
        return await self._request("untrust", peer=peer)

    async def pending(self) -> dict[str, Any]:
        """Trust requests waiting (`incoming`, `outgoing`), as `pilotif pending --json`."""
        return await self._request("pending")

    async def peers(self) -> list[dict[str, Any]]:
        """Trusted peers, as `pilotif peers --json`."""
        rows: list[dict[str, Any]] = (await self._request("peers")).get("peers", [])
        return rows

    async def _request(self, command: str, **arguments: object) -> dict[str, Any]:
        reply = await self._running().request(command, **arguments)
        if not reply.get("ok", False):
            raise NodeError(
                str(reply.get("code", "refused")),
                str(reply.get("error", "refused")),
                str(reply.get("hint", "")),
            )
        return reply

    def _running(self) -> Daemon:
        if self._daemon is None:
            raise RuntimeError("the node is not running: use `async with Node(...)`")
        return self._daemon
