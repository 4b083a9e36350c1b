"""The daemon: starts and stops one interface (its UDP port, the registry join, the TUN
and its link, the servers on the overlay address), wires the packet pump (datapath.py)
to the cores, and answers the control socket.
"""

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface
from pathlib import Path
from typing import Any

from pilotif.control.counter_lease import CounterLease
from pilotif.control.identity import IPV6_PREFIX
from pilotif.control.wire import format_endpoint
from pilotif.daemon.api import Reply, Request, serve_control
from pilotif.daemon.datapath import DataPath
from pilotif.daemon.netwatch import NetworkWatch
from pilotif.daemon.node_runner import NodeRunner, RegistryError
from pilotif.daemon.overlay_servers import OverlayServers
from pilotif.daemon.wgquick import InterfaceConfig
from pilotif.net.bind import Bind, UdpBind, endpoint_text
from pilotif.net.udp import UnderlayError, resolve_endpoint, resolve_endpoints
from pilotif.net.udp_batch import segments_per_send
from pilotif.node.cache import NodeCache, NodeSnapshot
from pilotif.node.core import NodeCore, NodeOptions
from pilotif.node.events import NodeEvent, RegistrySwitched, RelaysChanged
from pilotif.node.lan import local_endpoints
from pilotif.node.policy import PeerIdentity, PolicyError, packet_filter
from pilotif.node.policy_files import PolicyFiles
from pilotif.node.trust import TrustFiles
from pilotif.observe import (
    EventBus,
    NodeCollector,
    NodeSample,
    PeerSample,
    Webhook,
    start_metrics_server,
)
from pilotif.observe.publisher import EventPublisher
from pilotif.services.commands import SERVICE_COMMANDS
from pilotif.tun import (
    Ipv6UnavailableError,
    LinkError,
    TunDevice,
    TunError,
    configure_link,
    delete_link,
    limit_gso_segments,
    link_exists,
)
from pilotif.tun.offload import TunBatch, enable_offloads
from pilotif.util.files import StateFileError, write_private_file
from pilotif.util.logs import log_event
from pilotif.util.paths import StatePaths
from pilotif.wg.constants import TRANSPORT_MIN_SIZE
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint, Event
from pilotif.wg.keys import encode_key

DEFAULT_MTU = 1420


class StartupError(Exception):
    """The daemon could not start; the message says why and what to do."""


class Daemon:
    """One pilotif interface: TUN + UDP + overlay core + control socket, and with
    `node` options a registry-joined node (addresses, trust and paths from the registry)."""

    def __init__(
        self,
        config: InterfaceConfig,
        interface: str,
        paths: StatePaths,
        node_options: NodeOptions | None = None,
        *,
        metrics: Endpoint | None = None,
        webhook: str | None = None,
        policy_file: Path | None = None,
    ) -> None:
        self.config = config
        self._policy_files = PolicyFiles(paths.root, policy_file)
        self.interface = interface
        self.paths = paths
        self.node_options = node_options
        self.node: NodeRunner | None = None
        self.mtu = config.mtu or DEFAULT_MTU
        self.addresses: list[IPv4Interface | IPv6Interface] = list(config.addresses)
        self.device = Device(
            config.private_key, mtu=self.mtu, wall_offset_s=time.time() - time.monotonic()
        )
        self._tun: TunDevice | None = None
        self._tun_io: TunBatch | None = None
        self._bind: Bind | None = None
        self._tso_max_segments: int | None = None
        """The cap on segments per TSO super-packet (one UDP GSO send), if the kernel took it."""
        self._datapath: DataPath | None = None
        self._stopping: asyncio.Event | None = None
        self.events = EventBus()
        """Peer, path, trust and registry events for `pilotif events` and the webhook."""
        self.publisher = EventPublisher(self.events)
        self._servers = OverlayServers(paths, interface, self.events)
        self._metrics = metrics
        self._metrics_server: asyncio.AbstractServer | None = None
        self._webhook = Webhook(webhook, self.events) if webhook is not None else None
        self._netwatch: NetworkWatch | None = None
        self._network_task: asyncio.Future[None] | None = None

    # -- start and stop ------------------------------------------------------------

    def run(self, ready_fd: int | None = None) -> None:
        """Run until SIGTERM, SIGINT or a `down` request; report readiness on `ready_fd`.

        Link setup and teardown run in a worker thread: pyroute2's synchronous API
        runs an event loop of its own.
        """
        asyncio.run(self._main(ready_fd))

    async def _main(self, ready_fd: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self._start()
        except (
            OSError,
            TunError,
            LinkError,
            UnderlayError,
            RegistryError,
            StateFileError,
            PolicyError,
        ) as error:
            await loop.run_in_executor(None, self._close)
            message = str(error) or type(error).__name__
            if isinstance(error, RegistryError) and error.hint:
                message += f" ({error.hint})"
            raise StartupError(message) from error
        assert self._datapath is not None and self._bind is not None
        server = await serve_control(
            self.paths.control_socket, self._handle_request, {"events": self._event_stream}
        )
        if self._webhook is not None:
            self._webhook.start()
        write_private_file(self.paths.pid_file, f"{os.getpid()}\n")
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stopping.set)
            loop.add_signal_handler(
                signal.SIGHUP,
                self._reload_static_policy if self.node is None else self.node.reload_policy,
            )
            log_event(
                "interface_up",
                interface=self.interface,
                public_key=encode_key(self.device.public_key),
                listen_port=self._bind.port,
                addresses=",".join(str(a) for a in self.addresses),
                mtu=self.mtu,
                peers=len(self.device.peers()),
            )
            self._datapath.flush(time.monotonic())
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            await self._stopping.wait()
        finally:
            server.close()
            if self._metrics_server is not None:
                self._metrics_server.close()
            if self._webhook is not None:
                await self._webhook.close()
            if self.node is not None:
                self.node.close()
            if self._netwatch is not None:
                self._netwatch.close()
            self._datapath.close()
            self._servers.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.control_socket.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.paths.pid_file.unlink()
            await loop.run_in_executor(None, self._close)
            log_event("interface_down", interface=self.interface)

    async def _start(self) -> None:
        """Sockets, joining the registry (node mode), then the TUN and its link."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        static_peers = [
            (peer, resolve_endpoint(*peer.endpoint) if peer.endpoint else None)
            for peer in self.config.peers
        ]
        registries: tuple[Endpoint, ...] = ()
        cache = NodeCache(self.paths.root)
        snapshot = None
        if self.node_options is not None:
            registries = _registry_endpoints(self.node_options)
            snapshot = cache.load()
        self._bind = self._open_bind(registries, snapshot)
        self._datapath = DataPath(self.device, self._bind, loop, self._on_event)
        routes = [network for peer in self.config.peers for network in peer.allowed_ips]
        node = None
        if self.node_options is not None and registries:
            node = await self._join_registry(self.node_options, registries, cache, snapshot)
            core = node.core
            assert core.ipv4 is not None and core.network is not None
            self.addresses = [
                ip_interface(f"{core.ipv4}/{core.network.prefixlen}"),
                ip_interface(f"{core.ipv6}/{IPV6_PREFIX.prefixlen}"),
            ]
        await loop.run_in_executor(None, self._open_tun, routes)
        assert self._tun_io is not None
        self._datapath.start_tun(self._tun_io)
        for peer, endpoint in static_peers:
            self.device.add_peer(
                peer.public_key,
                allowed_ips=peer.allowed_ips,
                endpoint=endpoint,
                preshared_key=peer.preshared_key,
                persistent_keepalive_s=peer.persistent_keepalive_s,
                now=now,
            )
        if static_peers:
            self._apply_static_policy()
        if node is not None:
            await node.synced()
            await self._servers.start(node.core, self.addresses)
            self._netwatch = NetworkWatch(self.interface, loop, self._on_network_change)
        if self._metrics is not None:
            collector = NodeCollector(self.metrics_sample)
            self._metrics_server = await start_metrics_server(*self._metrics, collector)
            log_event("metrics_serving", listen=format_endpoint(self._metrics))

    async def _join_registry(
        self,
        options: NodeOptions,
        registries: tuple[Endpoint, ...],
        cache: NodeCache,
        snapshot: NodeSnapshot | None,
    ) -> NodeRunner:
        loop = asyncio.get_running_loop()
        files = TrustFiles(self.paths.root)
        trust = files.load()
        if options.registry_key is not None:
            if trust.registry_key not in (None, options.registry_key):
                log_event("registry_pin_replaced", key=encode_key(options.registry_key))
            trust.registry_key = options.registry_key
            files.save(trust)
        assert self._bind is not None and self._datapath is not None
        port = self._bind.port
        lan = await loop.run_in_executor(None, local_endpoints, port, self.interface)
        lease = CounterLease(self.paths.control_counter)
        core = NodeCore(
            options,
            self.device,
            trust,
            registry=registries[0],
            registry_replicas=registries[1:],
            lan_endpoints=lan,
            first_counter=lease.first,
        )
        core.set_policy(self._policy_files.load())
        self.node = NodeRunner(
            core,
            files,
            lease,
            cache,
            self._policy_files,
            listen_port=port,
            send=self._bind.send_control,
            flush=self._datapath.flush,
            on_event=self._on_event,
        )
        self.publisher.node = core
        self._datapath.node = self.node
        await self.node.join(snapshot)
        return self.node

    def _apply_static_policy(self) -> None:
        """Static peers have no names or tags: only rules for `*` name them."""
        policy = self._policy_files.load()
        anonymous = PeerIdentity("", (), same_network=False)
        for peer in self.device.peers():
            self.device.set_packet_filter(peer.public_key, packet_filter(policy, anonymous))

    def _reload_static_policy(self) -> None:
        try:
            self._apply_static_policy()
        except PolicyError as error:
            log_event("policy_not_reloaded", error=str(error))
            return
        log_event("policy_reloaded")

    def _on_network_change(self, changes: list[str]) -> None:
        """Addresses or the default route of this host changed (they settled)."""
        self._network_task = asyncio.ensure_future(self._network_changed(changes))

    async def _network_changed(self, changes: list[str]) -> None:
        if self.node is None or self._bind is None:
            return
        loop = asyncio.get_running_loop()
        lan = await loop.run_in_executor(None, local_endpoints, self._bind.port, self.interface)
        log_event("network_changed", lan=",".join(lan), changes=", ".join(changes))
        now = time.monotonic()
        self.node.core.network_changed(lan, now)
        self.node.after_input(now)

    def _open_bind(self, registries: tuple[Endpoint, ...], snapshot: NodeSnapshot | None) -> Bind:
        """The UDP port: the one asked for, else the node's port of its last run (so that
        peers and NAT mappings that know it still reach it), else any."""
        if self.config.listen_port is not None or snapshot is None:
            return UdpBind(self.config.listen_port, registries)
        try:
            return UdpBind(snapshot.listen_port, registries)
        except UnderlayError:
            log_event("listen_port_taken", port=snapshot.listen_port)
            return UdpBind(None, registries)

    def _open_tun(self, routes: list[IPv4Network | IPv6Network]) -> None:
        if link_exists(self.interface):
            delete_link(self.interface)
            log_event("stale_interface_removed", interface=self.interface)
        self._tun = TunDevice.open(self.interface, vnet_hdr=True)
        self._tun_io = TunBatch(self._tun, enable_offloads(self._tun))
        try:
            configure_link(self.interface, self.addresses, self.mtu, routes)
        except Ipv6UnavailableError as error:
            if self.node is None:
                raise
            # A node's IPv6 address is a bonus: carry on with IPv4 (e.g. in a container
            # whose /proc/sys is read-only with IPv6 off).
            log_event("ipv6_unavailable", level=logging.WARNING, error=str(error))
            self.addresses = [a for a in self.addresses if a.version == 4]
            configure_link(self.interface, self.addresses, self.mtu, routes)
        if self._tun_io.offloads.tso:
            # A full-MTU packet is never padded: its datagram is MTU + header + tag.
            segments = segments_per_send(self.mtu + TRANSPORT_MIN_SIZE)
            if limit_gso_segments(self.interface, segments):
                self._tso_max_segments = segments

    def _close(self) -> None:
        if self._tun is not None:
            self._tun.close()
            self._tun = None
            with contextlib.suppress(Exception):
                delete_link(self.interface)
        if self._bind is not None:
            self._bind.close()
            self._bind = None

    # -- events and metrics ----------------------------------------------------------

    def _on_event(self, event: Event | NodeEvent) -> None:
        """Log and publish an event of either core; keep the DNS names current and the
        relay at the registry replica we talk to."""
        self.publisher.publish(event)
        if isinstance(event, RegistrySwitched) and self.node is not None:
            assert self._bind is not None
            self._bind.use_registry(self.node.core.link.endpoint)
        if isinstance(event, RelaysChanged) and self.node is not None:
            assert self._bind is not None
            relays = self.node.core.relays
            self._bind.use_relays(relays.home_endpoint, relays.endpoints())
        if self.node is not None:
            self._servers.update_names(self.node.core)

    def _path_of(self, key: bytes) -> str:
        if self.node is not None:
            return self.node.core.path_of(key)
        peer = self.device.peer(key)
        return "none" if peer is None or peer.current is None else "direct"

    def metrics_sample(self) -> NodeSample:
        """The node's metrics now (called at scrape time)."""
        return NodeSample(
            peers=[
                PeerSample(
                    name=self.publisher.peer_name(peer.public_key),
                    path=self._path_of(peer.public_key),
                    rx_bytes=peer.rx_bytes,
                    tx_bytes=peer.tx_bytes,
                )
                for peer in self.device.peers()
            ],
            handshakes=self.publisher.handshakes,
            drops={str(reason): count for reason, count in self.device.drops.items()},
            relay_rx_bytes=self._bind.counters["relay_rx_bytes"] if self._bind else 0,
            relay_tx_bytes=self._bind.counters["relay_tx_bytes"] if self._bind else 0,
            registry_online=self.node.core.registry_online if self.node is not None else None,
        )

    async def _event_stream(self, request: Request) -> AsyncGenerator[Reply, None]:
        """`pilotif events`: every event from now on, until the client hangs up."""
        subscription = self.events.subscribe()
        try:
            while True:
                yield await subscription.get()
        finally:
            subscription.close()

    # -- control -------------------------------------------------------------------

    async def _handle_request(self, request: Request) -> Reply:
        command = request.get("command")
        if command == "status":
            return {"ok": True, "status": self.status()}
        if command == "down":
            assert self._stopping is not None
            self._stopping.set()
            return {"ok": True}
        if command in SERVICE_COMMANDS:
            if self._servers.commands is None:
                return {
                    "ok": False,
                    "error": "the agent services are not running here",
                    "code": "no_services",
                    "hint": "they run on nodes joined to a registry; see the daemon's log",
                }
            return await self._servers.commands.handle(request)
        if self.node is not None:
            reply = await self.node.command(request)
            for peer in reply.get("peers", []):
                latest = peer.pop("last_handshake_s")
                peer["last_handshake"] = None if latest is None else latest + self._wall_offset()
            if self._datapath is not None:
                self._datapath.flush(time.monotonic())
            return reply
        return {
            "ok": False,
            "error": f"`{command}` needs a registry: start with `pilotif up --registry`",
            "code": "no_registry",
        }

    @staticmethod
    def _wall_offset() -> float:
        return time.time() - time.monotonic()

    def status(self) -> dict[str, Any]:
        """What `pilotif status` shows."""
        wall_offset = self._wall_offset()
        peers = []
        for peer in self.device.peers():
            latest = peer.last_handshake_s
            peers.append(
                {
                    "public_key": encode_key(peer.public_key),
                    "endpoint": peer.endpoint and endpoint_text(peer.endpoint),
                    "allowed_ips": [str(n) for n in peer.allowed_ips],
                    "latest_handshake": None if latest is None else latest + wall_offset,
                    "rx_bytes": peer.rx_bytes,
                    "tx_bytes": peer.tx_bytes,
                    "persistent_keepalive": peer.persistent_keepalive_s,
                    "preshared_key": any(peer.preshared_key),
                }
            )
        return {
            "interface": self.interface,
            "public_key": encode_key(self.device.public_key),
            "listen_port": self._bind.port if self._bind else None,
            "addresses": [str(a) for a in self.addresses],
            "mtu": self.mtu,
            "pid": os.getpid(),
            "peers": peers,
            "drops": {str(reason): count for reason, count in self.device.drops.items()},
            "bind": dict(self._bind.counters) if self._bind else {},
            "offloads": {
                "tun": self._tun_io.offloads.status() if self._tun_io else None,
                "tso_max_segments": self._tso_max_segments,
                "udp": self._bind.status() if self._bind else None,
            },
            "node": self._node_status(wall_offset),
        }

    def _node_status(self, wall_offset: float) -> dict[str, Any] | None:
        if self.node is None:
            return None
        status = self.node.core.status()
        lost = status.pop("registry_lost_s")
        status["registry_unreachable_since"] = None if lost is None else lost + wall_offset
        return status


def _registry_endpoints(options: NodeOptions) -> tuple[Endpoint, ...]:
    """The registry's addresses: every address of each name given (its replicas), in
    order; a name that does not resolve is left out (logged) while another does."""
    found: list[Endpoint] = []
    errors: list[str] = []
    for host, port in (options.registry, *options.registry_replicas):
        try:
            found += [e for e in resolve_endpoints(host, port) if e not in found]
        except UnderlayError as error:
            errors.append(str(error))
            log_event("registry_unresolved", level=logging.WARNING, error=str(error))
    if not found:
        raise UnderlayError(errors[0])
    return tuple(found)
