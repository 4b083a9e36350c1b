"""What a joined node serves on its own overlay address: `.pilot` names (DNS, and the
host's resolver pointed at it) and the agent services (docs/AGENTS.md).

Both are conveniences: a failure to start either is logged and `up` carries on; only a
damaged services store stops `up`, with one line saying what to do (as other state files).
"""

import contextlib
import logging
from ipaddress import IPv4Interface, IPv6Interface

from pilotif.dns import DnsResponder, DnsServer, NameTable, ResolverConfig, ResolverError, serve_dns
from pilotif.node.core import NodeCore
from pilotif.node.peers import find_peer, peer_names
from pilotif.observe import EventBus
from pilotif.services.commands import ServiceCommands
from pilotif.services.files import ReceivedFile, ReceivedFiles
from pilotif.services.inbox import Inbox, Message
from pilotif.services.overlay_net import KERNEL, OverlayNet
from pilotif.services.server import AgentServices
from pilotif.services.store import ServiceStore
from pilotif.services.task_service import TaskService
from pilotif.services.tasks import TaskStore
from pilotif.util.logs import log_event
from pilotif.util.paths import StatePaths

DNS_PORT = 53


class OverlayServers:
    """The DNS responder and the agent services of one node."""

    def __init__(
        self, paths: StatePaths, interface: str, events: EventBus, net: OverlayNet | None = None
    ) -> None:
        """`net`: a userspace stack's TCP (then no DNS: names are the proxies' to resolve),
        else the kernel's."""
        self._net = net
        self._paths = paths
        self._interface = interface
        self._events = events
        self._responder = DnsResponder(NameTable())
        self._names_version = -1
        self._dns: DnsServer | None = None
        self._resolver: ResolverConfig | None = None
        self._services: AgentServices | None = None
        self._store: ServiceStore | None = None
        self.commands: ServiceCommands | None = None
        """The CLI's service commands, while the services run."""

    async def start(self, node: NodeCore, addresses: list[IPv4Interface | IPv6Interface]) -> None:
        self.update_names(node)
        await self._start_services(node)  # first: a damaged store stops `up` before DNS
        if self._net is None:
            await self._start_dns(node, addresses)

    def update_names(self, node: NodeCore) -> None:
        """Point the DNS table at the node's trusted peers, if they changed."""
        if node.peers_version != self._names_version:
            self._names_version = node.peers_version
            self._responder.table.update(peer_names(node.peers.values()))

    async def _start_dns(
        self, node: NodeCore, addresses: list[IPv4Interface | IPv6Interface]
    ) -> None:
        """Serve `.pilot` names on our overlay address and point the resolver at it."""
        address = str(node.ipv4)
        resolver = ResolverConfig(self._paths.root)
        try:
            self._dns = await serve_dns(
                self._responder, [(address, DNS_PORT)], resolver.original_nameservers()
            )
        except (OSError, ResolverError) as error:
            log_event("dns_unavailable", level=logging.WARNING, error=str(error))
            return
        if not node.options.accept_dns:
            return
        try:
            resolver.apply(self._interface, address, [a.network for a in addresses])
        except (OSError, ResolverError) as error:
            log_event("resolver_not_configured", level=logging.WARNING, error=str(error))
            return
        self._resolver = resolver
        log_event("dns_configured", nameserver=address, domain="pilot")

    async def _start_services(self, node: NodeCore) -> None:
        def peer_of(address: str) -> str | None:
            peer = find_peer(node.peers.values(), address)
            return None if peer is None else peer.hostname

        def trusted(text: str) -> tuple[str, str] | None:
            peer = find_peer(node.peers.values(), text)
            return None if peer is None else (peer.hostname, str(peer.ipv4))

        def address_of(hostname: str) -> str | None:
            found = trusted(hostname)
            return None if found is None else found[1]

        def received(message: Message) -> None:
            self._events.publish(
                "message_received", peer=message.sender, id=message.id, text=message.text
            )

        def file_received(file: ReceivedFile) -> None:
            self._events.publish(
                "file_received", peer=file.sender, id=file.id, name=file.name, size=file.size
            )

        try:
            files = ReceivedFiles(self._paths.root)
        except OSError as error:
            log_event("services_unavailable", level=logging.WARNING, error=str(error))
            return
        store = ServiceStore(self._paths.root)  # StateFileError: `up` says what to do
        self._store = store
        tasks = TaskService(TaskStore(store), address_of, self._net or KERNEL)
        services = AgentServices(
            Inbox(store),
            files,
            tasks,
            peer_of,
            received,
            file_received,
            own_name=node.options.hostname,  # this node, using its own services as root
            net=self._net,
        )
        try:
            await services.start(str(node.ipv4))
        except OSError as error:
            log_event("services_unavailable", level=logging.WARNING, error=str(error))
            return
        self._services = services
        self.commands = ServiceCommands(services, trusted)
        tasks.start()

    def close(self) -> None:
        """Stop both, and give the resolver back what it had."""
        if self._resolver is not None:
            with contextlib.suppress(OSError, ResolverError):
                self._resolver.restore()
            self._resolver = None
        if self._dns is not None:
            self._dns.close()
            self._dns = None
        if self._services is not None:
            self._services.tasks.close()
            self._services.close()
            self._services = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self.commands = None
