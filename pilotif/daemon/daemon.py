"""The daemon's start-up and shutdown: one interface (its UDP port, the registry join, the
TUN and its link or a userspace stack (`--userspace`), the servers on the overlay
address), the packet pump (datapath.py) wired to the cores, the control socket served.
What it answers is requests.py's, what status shows status.py's, where events go
event_router.py's.
"""

import asyncio
import contextlib
import logging
import os
import signal
import time
from ipaddress import IPv4Network, IPv6Network, ip_interface
from pathlib import Path
from typing import Any

from pilotif.control.counter_lease import CounterLease
from pilotif.control.identity import IPV6_PREFIX
from pilotif.control.wire import KEY_REQUEST
from pilotif.daemon.api import serve_control
from pilotif.daemon.datapath import DataPath
from pilotif.daemon.event_publisher import EventPublisher
from pilotif.daemon.event_router import EventRouter
from pilotif.daemon.netwatch import NetworkWatch
from pilotif.daemon.node_runner import NodeRunner, RegistryError
from pilotif.daemon.overlay_servers import OverlayServers
from pilotif.daemon.parts import Parts
from pilotif.daemon.requests import ControlRequests
from pilotif.daemon.status import metrics_sample, wall_offset
from pilotif.daemon.wgquick import InterfaceConfig
from pilotif.net.bind import Bind, UdpBind
from pilotif.net.hostport import format_endpoint
from pilotif.net.streams import StreamOptions
from pilotif.net.udp import (
    UnderlayError,
    resolve_endpoint,
    resolve_endpoints,
    send_with_hop_limit,
)
from pilotif.net.udp_batch import segments_per_send
from pilotif.node.cache import NodeCache, NodeSnapshot
from pilotif.node.core import NodeCore
from pilotif.node.lan import local_endpoints
from pilotif.node.path_manager import Opener
from pilotif.node.policy import PeerIdentity, PolicyError, packet_filter
from pilotif.node.policy_files import PolicyFiles
from pilotif.node.registration import NodeOptions
from pilotif.node.trust import TrustFiles
from pilotif.observe import (
    EventBus,
    NodeCollector,
    Webhook,
    start_metrics_server,
)
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
from pilotif.userspace.node import UserspaceNode, UserspaceOptions
from pilotif.util.files import StateFileError, write_private_file
from pilotif.util.logs import log_event
from pilotif.util.paths import StatePaths
from pilotif.wg.constants import TRANSPORT_MIN_SIZE
from pilotif.wg.device import Device
from pilotif.wg.events import Endpoint
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
        userspace: UserspaceOptions | None = None,
    ) -> None:
        """`userspace`: a network stack in the process instead of a TUN (no root)."""
        self.config = config
        self.userspace = userspace
        self._policy_files = PolicyFiles(paths.root, policy_file)
        self.paths = paths
        self.node_options = node_options
        mtu = config.mtu or DEFAULT_MTU
        device = Device(config.private_key, mtu=mtu, wall_offset_s=wall_offset())
        self.parts = Parts(interface, device, mtu, list(config.addresses))
        self._tun: TunDevice | None = None
        self._tun_io: TunBatch | None = None
        self._local: UserspaceNode | None = None
        self._datapath: DataPath | None = None
        self._stopping = asyncio.Event()
        self.events = EventBus()
        """Peer, path, trust and registry events for `pilotif events` and the webhook."""
        self.publisher = EventPublisher(self.events)
        self._servers = OverlayServers(paths, interface, self.events)
        self._events = EventRouter(self.parts, self.publisher, self._names_changed)
        self._requests = ControlRequests(
            self.parts,
            self.events,
            stop=self._stopping.set,
            flush=self._flush,
            services=lambda: self._servers.commands,
            now=time.monotonic,
        )
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
        parts = self.parts
        await self.start()
        server = await serve_control(
            self.paths.control_socket,
            self._requests.handle,
            {"events": self._requests.events},
            self._local.pipes if self._local is not None else None,
        )
        write_private_file(self.paths.pid_file, f"{os.getpid()}\n")
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stopping.set)
            loop.add_signal_handler(
                signal.SIGHUP,
                self._reload_static_policy if parts.node is None else parts.node.reload_policy,
            )
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            await self._stopping.wait()
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.control_socket.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.paths.pid_file.unlink()
            await self.stop()

    async def start(self) -> None:
        """Bring the interface up on the running loop (StartupError says why not); the
        control socket is `run`'s (a node embedded in a program has none)."""
        loop = asyncio.get_running_loop()
        parts = self.parts
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
        assert self._datapath is not None and parts.bind is not None
        if self._webhook is not None:
            self._webhook.start()
        log_event(
            "interface_up",
            interface=parts.interface,
            public_key=encode_key(parts.device.public_key),
            listen_port=parts.bind.port,
            addresses=",".join(str(a) for a in parts.addresses),
            mtu=parts.mtu,
            peers=len(parts.device.peers()),
        )
        self._datapath.flush(time.monotonic())

    async def stop(self) -> None:
        """Take the interface down (after `start`)."""
        loop = asyncio.get_running_loop()
        parts = self.parts
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._webhook is not None:
            await self._webhook.close()
        if parts.node is not None:
            await parts.node.close_port_mapping()
            parts.node.close()
        if self._netwatch is not None:
            self._netwatch.close()
        if self._datapath is not None:
            self._datapath.close()
        self._servers.close()
        if self._local is not None:
            self._local.close()
        await loop.run_in_executor(None, self._close)
        log_event("interface_down", interface=parts.interface)

    @property
    def local(self) -> UserspaceNode | None:
        """The userspace stack and its servers, for a `--userspace` node once started."""
        return self._local

    async def request(self, command: str, **arguments: object) -> dict[str, Any]:
        """What a control request answers (as the CLI's), for a node in a program."""
        return await self._requests.handle({"command": command, **arguments})

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
        parts = self.parts
        parts.bind = self._open_bind(registries, snapshot)
        self._datapath = DataPath(parts.device, parts.bind, loop, self._events.route)
        routes = [network for peer in self.config.peers for network in peer.allowed_ips]
        node = None
        if self.node_options is not None and registries:
            node = await self._join_registry(self.node_options, registries, cache, snapshot)
            core = node.core
            assert core.ipv4 is not None and core.network is not None
            parts.addresses = [
                ip_interface(f"{core.ipv4}/{core.network.prefixlen}"),
                ip_interface(f"{core.ipv6}/{IPV6_PREFIX.prefixlen}"),
            ]
        if self.userspace is not None:
            self._local = UserspaceNode(self.userspace, parts.addresses, loop)
            self._datapath.start_stack(self._local.stack)
            self._local.stack.wake_with(self._datapath.read_stack)
            parts.userspace = self._local.status
            self._servers = OverlayServers(
                self.paths, parts.interface, self.events, net=self._local.stack
            )
        else:
            await loop.run_in_executor(None, self._open_tun, routes)
            assert self._tun_io is not None
            self._datapath.start_stack(self._tun_io)
        for peer, endpoint in static_peers:
            parts.device.add_peer(
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
            await self._servers.start(node.core, parts.addresses)
            self._netwatch = NetworkWatch(parts.interface, loop, self._on_network_change)
        if self._local is not None:
            await self._local.start(node.core if node is not None else None)
        if self._metrics is not None:
            collector = NodeCollector(lambda: metrics_sample(parts, self.publisher))
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
        bind = self.parts.bind
        assert bind is not None and self._datapath is not None
        port = bind.port
        lan = await loop.run_in_executor(None, local_endpoints, port, self.parts.interface)
        lease = CounterLease(self.paths.control_counter)
        core = NodeCore(
            options,
            self.parts.device,
            trust,
            registry=registries[0],
            registry_replicas=registries[1:],
            lan_endpoints=lan,
            first_counter=lease.first,
        )
        core.set_policy(self._policy_files.load())
        node = self.parts.node = NodeRunner(
            core,
            files,
            lease,
            cache,
            self._policy_files,
            listen_port=port,
            send=bind.send_control,
            send_openers=lambda openers: _send_openers(bind, openers),
            flush=self._datapath.flush,
            on_event=self._events.route,
            port_mapping=True,
        )
        self.publisher.node = core
        self._datapath.node = node
        await node.join(snapshot)
        return node

    def _apply_static_policy(self) -> None:
        """Static peers have no names or tags: only rules for `*` name them."""
        policy = self._policy_files.load()
        anonymous = PeerIdentity("", (), same_network=False)
        device = self.parts.device
        for peer in device.peers():
            device.set_packet_filter(peer.public_key, packet_filter(policy, anonymous))

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
        node, bind = self.parts.node, self.parts.bind
        if node is None or bind is None:
            return
        loop = asyncio.get_running_loop()
        lan = await loop.run_in_executor(None, local_endpoints, bind.port, self.parts.interface)
        log_event("network_changed", lan=",".join(lan), changes=", ".join(changes))
        node.network_changed(lan, time.monotonic())

    def _open_bind(self, registries: tuple[Endpoint, ...], snapshot: NodeSnapshot | None) -> Bind:
        """The UDP port: the one asked for, else the node's port of its last run (so that
        peers and NAT mappings that know it still reach it), else any. A node's Bind
        also has streams to the registry and relays (`--transport`, `--proxy`)."""
        options = self.node_options
        streams = None
        if options is not None:
            streams = StreamOptions(
                options.transport, options.proxy, KEY_REQUEST, self._transport_changed
            )
        if self.config.listen_port is not None or snapshot is None:
            return UdpBind(self.config.listen_port, registries, streams)
        try:
            return UdpBind(snapshot.listen_port, registries, streams)
        except UnderlayError:
            log_event("listen_port_taken", port=snapshot.listen_port)
            return UdpBind(None, registries, streams)

    def _transport_changed(self, carrier: str) -> None:
        """The streams took over from UDP or gave back: the registry and relays see us at
        another address; the node registers from there once the send under way is over."""
        asyncio.get_running_loop().call_soon(self._register_again, carrier != "udp")

    def _register_again(self, over_stream: bool) -> None:
        if self.parts.node is not None:
            self.parts.node.carrier_changed(time.monotonic(), over_stream=over_stream)

    def _open_tun(self, routes: list[IPv4Network | IPv6Network]) -> None:
        parts = self.parts
        name = parts.interface
        if link_exists(name):
            delete_link(name)
            log_event("stale_interface_removed", interface=name)
        self._tun = TunDevice.open(name, vnet_hdr=True)
        self._tun_io = TunBatch(self._tun, enable_offloads(self._tun))
        parts.tun_offloads = self._tun_io.offloads.status()
        try:
            configure_link(name, parts.addresses, parts.mtu, routes)
        except Ipv6UnavailableError as error:
            if parts.node is None:
                raise
            # A node's IPv6 address is a bonus: carry on with IPv4 (e.g. in a container
            # whose /proc/sys is read-only with IPv6 off).
            log_event("ipv6_unavailable", level=logging.WARNING, error=str(error))
            parts.addresses = [a for a in parts.addresses if a.version == 4]
            configure_link(name, parts.addresses, parts.mtu, routes)
        if self._tun_io.offloads.tso:
            # A full-MTU packet is never padded: its datagram is MTU + header + tag.
            segments = segments_per_send(parts.mtu + TRANSPORT_MIN_SIZE)
            if limit_gso_segments(name, segments):
                parts.tso_max_segments = segments

    def _close(self) -> None:
        if self._tun is not None:
            self._tun.close()
            self._tun = None
            with contextlib.suppress(Exception):
                delete_link(self.parts.interface)
        if self.parts.bind is not None:
            self.parts.bind.close()
            self.parts.bind = None

    # -- what the other parts call ---------------------------------------------------

    def _names_changed(self) -> None:
        """After a node event: keep the DNS names current."""
        if self.parts.node is not None:
            self._servers.update_names(self.parts.node.core)

    def _flush(self, now: float) -> None:
        if self._datapath is not None:
            self._datapath.flush(now)


def _send_openers(bind: Bind, openers: list[Opener]) -> None:
    """Punch openers over the Bind's UDP sockets, each with its own hop limit (counted
    with the relay framing's: openers refused by the kernel are `punch_openers_refused`)."""
    sockets = bind.sockets()
    for opener in openers:
        if not send_with_hop_limit(sockets, opener.datagram, opener.endpoint, opener.hops):
            bind.counters["punch_openers_refused"] += 1


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
